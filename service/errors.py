"""Every error is a 4xx JSON body that names the field and the reason: {"detail": [{"loc", "msg", "type"}]}.

FastAPI's default validation body echoes the offending input, which may be NaN
(JSON cannot carry it: a 500) or a megabyte of data; the handler keeps only
where, why and what kind.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.responses import json_response


class ApiError(Exception):
    """A client error at a named location, e.g. ApiError(404, ["path", "model"], "unknown model ...")."""

    def __init__(self, status: int, loc: list[str | int], msg: str, kind: str = "value_error") -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.kind = status, loc, msg, kind


def error_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"detail": [{"loc": list(i.get("loc", [])), "msg": str(i.get("msg", "")), "type": str(i.get("type", "error"))} for i in items]}


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower() and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
        # FastAPI reads a body as JSON only when it says so (a CSRF guard); say that, not "not a dictionary"
        msg = f"send the body as JSON with Content-Type: application/json (got {content_type or 'no Content-Type'})"
        return json_response(error_body([{"loc": ["header", "content-type"], "msg": msg, "type": "unsupported_media_type"}]), 415)
    return json_response(error_body(exc.errors()), 422)


async def api_error(request: Request, exc: ApiError) -> Response:
    return json_response(error_body([{"loc": exc.loc, "msg": exc.msg, "type": exc.kind}]), exc.status)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    loc = ["body"] if exc.status_code in (400, 413) else ["request"]
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return json_response(error_body([{"loc": loc, "msg": detail, "type": f"http_{exc.status_code}"}]), exc.status_code, exc.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
