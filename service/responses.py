"""JSON bodies serialised once by orjson (numpy arrays included), bypassing FastAPI's re-encoding."""

from typing import Any

import orjson
from fastapi import Response


def json_bytes(payload: Any) -> bytes:
    """``payload`` as JSON, NumPy arrays and scalars included (orjson writes NaN and infinities as null)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(payload), status_code, headers, media_type=JSON)


JSON = "application/json"
