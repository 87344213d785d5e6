"""Every error is a 4xx JSON body that names the field and the reason: {"detail": [{"loc", "msg", "type"}]}.

FastAPI's default validation body echoes the offending input, which may be NaN
(JSON cannot carry it: a 500) or a megabyte of data; the handler keeps only
where, why and what kind.
"""

from __future__ import annotations

import codecs
import email.message
import email.utils
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope, Send

from amortized.inputs import DuplicateKey, LoneSurrogate, beyond_any_integer, shown
from service.responses import json_response
from service.schemas import MAX_ABS_Y
from trainer.jobs import UNAVAILABLE, public_url


class ApiError(Exception):
    """A client error at a named location, e.g. ApiError(404, ["path", "model"], "unknown model ...")."""

    def __init__(
        self,
        status: int,
        loc: list[str | int],
        msg: str,
        kind: str = "value_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.kind, self.headers = status, loc, msg, kind, headers


SHOWN_MESSAGE = 4000  # characters of one error's message: room for every served name, not for a quoted megabyte


def error_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``{"detail": [...]}`` of every error; names in ``loc`` and messages bounded and encodable (:func:`shown`).

    A location or a message may quote the caller's input (an unknown key of a megabyte, a model's name, a lone
    surrogate): an error is never much larger than its explanation, and always encodes. Messages quote a
    caller's text with :func:`amortized.inputs.quoted`; the cut here bounds whatever a message holds.
    """
    return {
        "detail": [
            {
                "loc": [part if isinstance(part, int) else shown(str(part)) for part in i.get("loc", [])],
                "msg": shown(str(i.get("msg", "")), SHOWN_MESSAGE),
                "type": str(i.get("type", "error")),
            }
            for i in items
        ]
    }


async def send_error(
    send: Send, status: int, loc: list[str | int], msg: str, kind: str, extra: Mapping[str, str] | None = None
) -> None:
    """Send an error response straight from ASGI middleware (before any route or handler runs); ``extra`` headers."""
    body = orjson.dumps(error_body([{"loc": loc, "msg": msg, "type": kind}]))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def reads_as_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or application/*+json.

    FastAPI's own rule (``fastapi.routing``, through ``email.message``): text/json,
    application/json-seq or application/jsonx are not JSON to it.
    """
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def declared_charsets(content_type: str) -> list[str]:
    """Every ``charset`` parameter of a Content-Type, lower case, in order; empty when it has none.

    A parameter given twice (``charset=utf-8; charset=latin-1``) is given twice here: which one a reader takes is
    its own choice (``email.message`` takes the first), so the caller refuses the label unless all agree.
    """
    if "charset" not in content_type.lower():  # the common case, without parsing (2.5 us a request)
        return []
    message = email.message.Message()
    message["content-type"] = content_type
    params = message.get_params() or []
    return [str(email.utils.collapse_rfc2231_value(v)).lower() for k, v in params[1:] if k.lower() == "charset"]


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    content_type = request.headers.get("content-type", "")
    if not reads_as_json(content_type) and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
        # FastAPI reads a body as JSON only when it says so (a CSRF guard); say that, not "not a dictionary"
        msg = f"send the body as JSON with Content-Type: application/json (got {content_type or 'no Content-Type'})"
        return json_response(
            error_body([{"loc": ["header", "content-type"], "msg": msg, "type": "unsupported_media_type"}]), 415
        )
    return json_response(error_body(at_most(plain_errors(exc.errors()), MAX_ERRORS)), 422)


MAX_ERRORS = 50  # items of one 422: a body of 100000 bad values gets the first ones and a count, not 30 MB


def at_most(items: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` error items, then one that says how many more there were (at ``["body"]``)."""
    if len(items) <= limit:
        return items
    more = {"loc": ["body"], "msg": f"and {len(items) - limit} more errors (only the first {limit} are listed)"}
    return [*items[:limit], {**more, "type": "too_many_errors"}]


def plain_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as a client wants them: one item per bad value, at its plain location.

    - A field typed as a union (y: ``float | list[float]``, version: ``str |
      dict[objective, str]``) reports every bad input once per union member,
      with the member's tag in ``loc`` (``constrained-float``,
      ``list[constrained-float]``...). Only the member the input's own shape
      selects is kept (a list selects the list, a dict the dict), without its
      tag, so a bad third observation is at ``["body", "y", 2]``. An input of a
      shape no member takes (an object for y, a list for version) gets one
      item at the field, with every member's expectation.
    - A body that is not JSON says why and where, at ``["body"]``.
    - An integer too large for a float (10**400) is "not a valid number" to
      pydantic; it is out of range, as 1e400 is, and says so.
    """
    whole = {}  # the input at each union location: a scalar member's error carries it whole
    for error in errors:
        loc = list(error.get("loc", ()))
        at = tag_at(loc)
        if at is not None and member_kind(loc[at]) == "scalar":
            whole[tuple(loc[:at])] = error.get("input")
    out = []
    dropped: dict[tuple, list[dict[str, Any]]] = {}  # per union location, the members' errors not kept
    reported: set[tuple] = set()  # union locations with an error kept
    for error in errors:
        loc = list(error.get("loc", ()))
        at = tag_at(loc)
        if at is not None:
            union = tuple(loc[:at])
            given = whole.get(union)
            selected = "list" if isinstance(given, list) else "dict" if isinstance(given, dict) else "scalar"
            if member_kind(loc[at]) != selected:
                dropped.setdefault(union, []).append(error)
                continue  # another member's view of the same input
            reported.add(union)
            del loc[at]
        item = {**error, "loc": loc}
        if error.get("type") == "value_error":  # a validator's own message: pydantic's prefix adds nothing
            item["msg"] = str(error.get("msg", "")).removeprefix("Value error, ")
        value = error.get("input")
        if error.get("type") == "float_type" and isinstance(value, int) and not isinstance(value, bool):
            item["msg"], item["type"] = (
                f"out of range: {_magnitude(value)} is beyond any float; {RANGE}",
                "out_of_range",
            )
        elif beyond := beyond_any_integer(error):  # Infinity, 1e400 or 4301 digits in an integer field
            item["msg"], item["type"] = beyond, "out_of_range"
        elif error.get("type") == "json_invalid":
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            item["loc"] = ["body"]
            # Python's decoder ends some messages with "at" ("Invalid control character at"): one "at" only
            why = str(error.get("ctx", {}).get("error", "cannot be decoded")).removesuffix(" at")
            item["msg"] = f"the body is not valid JSON: {why}{where}"
        elif error.get("type") == "missing" and loc == ["body"]:
            item["msg"] = "the body is empty: send a JSON object (each operation's example is in /docs)"
        elif error.get("type") == "finite_number":
            item["msg"], item["type"] = (
                f"out of range: not a finite number (NaN, infinity, or beyond about 1.8e308); {RANGE}",
                "out_of_range",
            )
        out.append(item)
    for field, items in dropped.items():
        if field in reported:
            continue
        # a shape no member takes (an object for y, a list for version): one item, every member's expectation
        expected = list(dict.fromkeys(item.get("msg", "") for item in items))
        out.append({**items[0], "loc": list(field), "msg": " or ".join(expected), "input": whole.get(field)})
    return out


RANGE = f"observations must be finite numbers within +-{MAX_ABS_Y:.0e}"


def tag_at(loc: list) -> int | None:
    """Where pydantic put a union member's tag in ``loc``, or None.

    Tags look like ``constrained-float``, ``list[constrained-float]`` or
    ``dict[literal['pq','qp'],constrained-str]``; the API's own field names have neither form.
    """
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part.startswith("constrained-") or "[" in part):
            return i
    return None


def member_kind(tag: str) -> str:
    """The shape of input a union member takes: "list", "dict" or "scalar"."""
    return "list" if tag.startswith("list[") else "dict" if tag.startswith("dict[") else "scalar"


def _magnitude(value: int) -> str:
    digits = len(str(abs(value)))
    return f"{'-' if value < 0 else ''}an integer of {digits} digits"


async def api_error(request: Request, exc: ApiError) -> Response:
    return json_response(error_body([{"loc": exc.loc, "msg": exc.msg, "type": exc.kind}]), exc.status, exc.headers)


QUEUE_RETRY_SECONDS = 5


async def queue_unavailable(request: Request, exc: Exception) -> Response:
    """503 naming the job queue (without credentials) when its storage cannot be reached or used (trainer.jobs).

    Not a 500: the request was fine, and the same request may succeed once the queue is back (Retry-After).
    """
    settings = request.app.state.settings
    where = public_url(settings.queue_url)
    msg = f"the job queue {where} cannot be reached or used ({shown(str(exc), 200)}); retry later"
    body = error_body([{"loc": ["queue"], "msg": msg, "type": "queue_unavailable"}])
    return json_response(body, 503, {"Retry-After": str(QUEUE_RETRY_SECONDS)})


def why_unparsed(cause: BaseException | None) -> str | None:
    """Why the JSON decoder refused a body, from the exception behind FastAPI's "There was an error parsing the body".

    None for a cause not named here (the generic message stays). (Nesting too deep for the decoder, a RecursionError,
    is a 422 as malformed JSON is: :func:`http_error`.)
    """
    if isinstance(cause, UnicodeDecodeError):  # the Utf8Json middleware refuses such bodies before they get here
        return not_utf8(bytes(cause.object)) or "the body is not valid JSON: it is not UTF-8 text"
    return None


# byte order marks of the encodings JSON's decoder would guess; UTF-32LE's begins with UTF-16LE's: it comes first
WIDE_BOMS = (
    (codecs.BOM_UTF32_BE, "UTF-32BE"),
    (codecs.BOM_UTF32_LE, "UTF-32LE"),
    (codecs.BOM_UTF16_BE, "UTF-16BE"),
    (codecs.BOM_UTF16_LE, "UTF-16LE"),
)


def wide_encoding(body: bytes) -> tuple[str, str] | None:
    """The UTF-16 or UTF-32 the start of a body shows, and how; None when it shows neither.

    A byte order mark shows it, or NULs among the first bytes: a JSON text
    begins with two ASCII characters, which UTF-16 and UTF-32 pad with NULs
    (RFC 4627, 3). These are the cases in which Python's ``json.loads`` of
    bytes (``json.detect_encoding``) decodes a body as other than UTF-8.
    """
    for bom, name in WIDE_BOMS:
        if body.startswith(bom):
            return name, "as its byte order mark shows"
    if len(body) == 2 or len(body) >= 4:
        nuls = "as the NUL bytes at its start show"
        if not body[0]:  # 00 00 .. .. or 00 xx
            return ("UTF-16BE" if body[1] else "UTF-32BE"), nuls
        if not body[1]:  # xx 00 00 00, or xx 00 with something else
            return ("UTF-16LE" if len(body) == 2 or body[2] or body[3] else "UTF-32LE"), nuls
    return None


def not_utf8(body: bytes) -> str | None:
    """Why a JSON body is not UTF-8 text, naming its first offending byte; None when it is UTF-8 (RFC 8259, 8.1).

    A body in UTF-16 or UTF-32 (:func:`wide_encoding`) says so, and its first
    offending byte is the first that is not UTF-8 or is a NUL. A UTF-8 byte
    order mark is UTF-8: the decoder ignores it, as RFC 8259 (8.1) allows.
    """
    wide = wide_encoding(body)
    if wide is None and body.isascii():  # the common case, in one pass
        return None
    try:
        body.decode("utf-8")
        first_bad = len(body)
    except UnicodeDecodeError as error:
        first_bad = error.start
    if wide is None:
        if first_bad == len(body):
            return None
        return f"the body is not valid JSON: it is not UTF-8 text (byte {first_bad} is 0x{body[first_bad]:02x})"
    name, evidence = wide
    nul = body.find(0)
    first_bad = min(first_bad, nul if nul >= 0 else len(body))
    return (
        f"the body is not valid JSON: it is not UTF-8 text but {name}, {evidence} (byte {first_bad} is "
        f"0x{body[first_bad]:02x}); JSON must be sent as UTF-8 (RFC 8259, 8.1)"
    )


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, DuplicateKey | LoneSurrogate):  # valid JSON, but ambiguous: 422
        return json_response(error_body([{"loc": ["body", *cause.path], "msg": str(cause), "type": cause.kind}]), 422)
    if exc.status_code == 400 and isinstance(cause, RecursionError):  # unreadable as JSON here: as malformed JSON is
        msg = "the body is not valid JSON for this service: its arrays or objects are nested too deeply"
        return json_response(error_body([{"loc": ["body"], "msg": msg, "type": "json_invalid"}]), 422)
    loc = ["body"] if exc.status_code in (400, 408, 413) else ["request"]
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400:
        detail = why_unparsed(exc.__cause__) or detail
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:  # every method of the path (GET /v1/models and POST /v1/models sit in two routers)
        headers = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
        headers["Allow"] = allowed_methods(request, (exc.headers or {}).get("Allow", ""))
    return json_response(
        error_body([{"loc": loc, "msg": detail, "type": f"http_{exc.status_code}"}]), exc.status_code, headers
    )


PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")
UNDECLARED_METHOD = "AMORTIZED-UNDECLARED"  # no route declares it: a route that takes it takes any method


def allowed_methods(request: Request, declared: str = "") -> str:
    """The methods the request's path answers, for the ``Allow`` of a 405 (RFC 9110, 15.5.6: it must list them).

    Starlette's 405 (``declared``) names the methods of the first route whose
    path matched, not of every route of the path, and FastAPI keeps an
    included router as one route of the app (it no longer copies the router's
    routes into ``app.routes``, whose ``Route`` objects this used to scan: it
    found none and sent ``Allow:`` empty). So each of the app's routes is
    asked, through its public ``matches``, whether it takes the path with each
    method. A route that takes any method (a mount: its app decides, as
    StaticFiles does with its own ``Allow``) adds nothing; ``declared`` stays.
    GET brings HEAD: the HeadAsGet middleware answers HEAD wherever GET answers.
    """
    scope = request.scope
    root_path = scope.get("app_root_path", scope.get("root_path", ""))  # a mount extends root_path

    def probe(method: str) -> Scope:
        return {
            "type": "http",
            "method": method,
            "path": scope["path"],
            "root_path": root_path,
            "headers": scope.get("headers", []),
            "query_string": b"",
        }

    methods = {m.strip().upper() for m in declared.split(",") if m.strip()}
    for route in request.app.router.routes:
        if route.matches(probe(UNDECLARED_METHOD))[0] == Match.FULL:
            continue
        methods |= {m for m in PROBED_METHODS if route.matches(probe(m))[0] == Match.FULL}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    # Starlette types every handler as taking Exception; each of these takes the one class it is registered for
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    for unavailable in UNAVAILABLE:  # the job queue's storage, out of reach
        app.add_exception_handler(unavailable, queue_unavailable)
