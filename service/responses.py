"""JSON bodies serialised once by orjson (numpy arrays included), bypassing FastAPI's re-encoding."""

from typing import Any

import orjson
from fastapi import Response


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code, headers, media_type="application/json"
    )
