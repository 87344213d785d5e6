"""The posterior endpoint: q's parameters, samples and importance-weighted diagnostics for each y.

Responses are serialised by orjson straight from numpy arrays and returned as
a ready ``Response``, which skips FastAPI's re-validation and jsonable_encoder
(about a millisecond per answer of 1000 samples); ``response_model`` still
documents the shape, and the tests validate real responses against it.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

import mimeparse
import torch
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from amortized.figures import PNG_HEIGHT, PNG_HEIGHT_BRANCHES, PNG_WIDTH, variant_title
from amortized.figures import posterior_png as draw
from amortized.importance.streams import draw_seed
from amortized.inputs import quoted
from amortized.mixture import base_model
from service import arrow
from service.admission import HeavyAdmission
from service.answers import PosteriorQuery, answer
from service.dependencies import BODY_ERRORS, QUERY_ERRORS, KnownQueryModelDep, check_version
from service.errors import ApiError
from service.metrics import OBJECTIVE_KEY, Metrics
from service.middleware import field_value, weighed_items
from service.registry import Registry, ServedModel
from service.responses import JSON, json_bytes
from service.routing import JsonRoute
from service.schemas import (
    DRAWN_PARTS,
    WHOLE_TEXT,
    ErrorResponse,
    PosteriorRequest,
    PosteriorResponse,
    QueryY,
    requested_objectives,
    resolve_parts,
)
from service.settings import Settings

# every route names a model: the query string is checked with it (KnownQueryModelDep), not by a router dependency
router = APIRouter(prefix="/v1/models", tags=["posterior"], route_class=JsonRoute)
VARY_ACCEPT = {"Vary": "Accept"}  # the answer's format depends on the Accept header (caches key on it)

EXAMPLES: dict[str, dict[str, Any]] = {
    "gaussian": {"summary": "gaussian: one y", "value": {"y": 1.5, "objective": "pq", "num_samples": 1000, "seed": 7}},
    "gmm": {
        "summary": "gmm: both losses at y = 0 (the seed's contrast)",
        "value": {"y": 0.0, "objective": "both", "num_samples": 1000, "seed": 7},
    },
    "gmm_discrete": {
        "summary": "gmm_discrete: a batch, with resampling",
        "value": {"y": [-8.0, 0.5, 12.0], "objective": "qp", "num_samples": 500, "seed": 7, "resample": True},
    },
    "gmm_open": {"summary": "gmm_open: one y", "value": {"y": 2.7, "objective": "pq", "num_samples": 1000, "seed": 7}},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **BODY_ERRORS,
    404: {"model": ErrorResponse, "description": "unknown model, or objective not compiled for it"},
    409: {
        "model": ErrorResponse,
        "description": "the pinned version is not served (the message names the served ones)",
    },
    406: {
        "model": ErrorResponse,
        "description": "the Accept header admits none of the answer's media types (the message names them)",
    },
    422: {"model": ErrorResponse, "description": "invalid field: the body names it and why"},
    503: {
        "model": ErrorResponse,
        "description": "a large request (more draws than AMORTIZED_OFFLOAD_SAMPLES) found no place among those "
        "answered at once within AMORTIZED_HEAVY_WAIT_SECONDS; Retry-After says when to try again",
    },
}


# the answer's media types, least preferred first: on a tie (*/*, application/*) JSON wins
MEDIA_TYPES = {arrow.MEDIA_TYPE: "arrow", "application/json": "json"}


TOKEN = r"[!#$%&'*+.^_`|~0-9a-z-]+"  # RFC 9110, 5.6.2 (lower case: items are lower-cased)
MEDIA_RANGE = re.compile(rf"\*/\*|{TOKEN}/\*|(?!\*/){TOKEN}/{TOKEN}")  # RFC 9110, 12.5.1: not */subtype


def negotiate(accept: str | None) -> str:
    """The layout the Accept header asks for: "json" (also when absent) or "arrow"; 406 naming the supported types.

    A q that is not a qvalue (RFC 9110, 12.4.2: 0 to 1, three decimals at most) makes the header unparseable:
    python-mimeparse would read it as 1.
    """
    if not accept or not accept.strip():
        return "json"
    supported = ", ".join(reversed(MEDIA_TYPES))

    def refuse(why: str) -> ApiError:
        return ApiError(
            406,
            ["header", "accept"],
            f"Accept {quoted(accept)} {why}; supported: {supported}",
            "not_acceptable",
            headers={"Vary": "Accept"},
        )

    items = weighed_items(accept)
    if any(q is None for _, q in items):
        raise refuse("cannot be parsed (q must be a number from 0 to 1, three decimals at most)")
    if not all(MEDIA_RANGE.fullmatch(name) for name, _ in items if name):  # empty list items are allowed (5.6.1)
        raise refuse("cannot be parsed (a media range is */*, type/* or type/subtype, without spaces)")
    # python-mimeparse splits at every comma, a quoted one too: it weighs the items as read here (lower case: media
    # types are case-insensitive), without their other parameters, which no supported type has
    canonical = ", ".join(f"{name};q={q}" for name, q in items if name)
    try:
        chosen = mimeparse.best_match(list(MEDIA_TYPES), canonical)
    except (mimeparse.MimeTypeParseException, ValueError):
        raise refuse("cannot be parsed") from None
    if not chosen:
        raise refuse("admits none of the supported types")
    return MEDIA_TYPES[chosen]


def check_parts(request: PosteriorRequest) -> frozenset[str]:
    """The parts the answer holds (:func:`resolve_parts`), refusing those that cannot be had: 422 naming the field."""
    parts = resolve_parts(request.include, request.num_samples, request.resample)
    if "resampled" in parts and not request.resample:
        raise ApiError(422, ["body", "include"], 'include asks for "resampled", which needs "resample": true')

    drawn = sorted(parts & DRAWN_PARTS)
    if request.num_samples == 0 and drawn:
        asked = "the default answer" if request.include is None else "include"
        raise ApiError(
            422,
            ["body", "num_samples"],
            f"0 samples draw nothing, but {asked} asks for {', '.join(drawn)}: ask for at least 1 sample, or an "
            'include without parts made of draws (e.g. ["q", "exact", "summary"])',
        )
    return parts


def check_request(
    request: PosteriorRequest, served: ServedModel, settings: Settings, registry: Registry
) -> list[float]:
    """Limits from the environment, and objectives that exist for this model; returns y as a list."""
    y = request.y if isinstance(request.y, list) else [request.y]
    if not y:
        raise ApiError(422, ["body", "y"], "at least one observation is needed")
    if len(y) > settings.max_batch:
        raise ApiError(
            422, ["body", "y"], f"{len(y)} observations: at most {settings.max_batch} per request (AMORTIZED_MAX_BATCH)"
        )
    if request.num_samples > settings.max_samples:
        raise ApiError(
            422,
            ["body", "num_samples"],
            f"at most {settings.max_samples} samples per observation (AMORTIZED_MAX_SAMPLES)",
        )
    needed = requested_objectives(request.objective)
    missing = [o for o in needed if o not in served.artifacts]
    if missing:
        available = ", ".join(served.objectives)
        refusals = registry.refusals(served.name)
        refused = [f"{o} was refused ({refusals[o]})" for o in missing if o in refusals]
        if refused:
            raise ApiError(
                404, ["body", "objective"], f"{'; '.join(refused)} for {served.name}; available: {available}", "refused"
            )
        raise ApiError(
            404,
            ["body", "objective"],
            f"{' and '.join(missing)} is not compiled for {served.name}; available: {available}",
            "not_found",
        )
    return y


def check_cost(query: PosteriorQuery, settings: Settings) -> None:
    """The draws a query makes within AMORTIZED_MAX_TOTAL_SAMPLES.

    Every objective's, the cross-check's and resampling's.
    """
    if query.size > settings.max_total_samples:
        # advise only what lowers the count: the cross-check counts only where it runs
        remedy = ', or set "cross_check": false' if query.cross_check else ""
        raise ApiError(
            422,
            ["body"],
            f"this request would draw {query.size} samples (len(y) x objectives x (num_samples, plus max(num_samples,"
            f" {query.check_samples}) of the other network for the cross-check, plus num_samples to resample)), over"
            f" {settings.max_total_samples} (AMORTIZED_MAX_TOTAL_SAMPLES): ask fewer observations or samples{remedy}",
        )


@router.post(
    "/{model}/posterior",
    response_model=PosteriorResponse,
    responses={
        200: {
            "description": "the answer: JSON (the schema below) or, with Accept: "
            f"{arrow.MEDIA_TYPE}, the same content as an Arrow IPC stream (README, Answer formats); compressed "
            "with zstd or gzip where Accept-Encoding asks and the body reaches AMORTIZED_COMPRESS_MIN_BYTES",
            "content": {arrow.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **ERRORS,
    },
    summary="Posterior for observation(s) y: q, samples, log weights, diagnostics, and the exact answer",
)
async def posterior(
    request: Annotated[PosteriorRequest, Body(openapi_examples=EXAMPLES)],
    served: KnownQueryModelDep,
    http: Request,
) -> Response:
    """A scalar y answers one object; a list answers {"results": [...]} in the same order.

    Each answer has q(.|y) as branches (latents, probability, mean, std), columnar
    samples with their log weights, importance diagnostics with a plain verdict
    (cross-checked against the other compiled network), and the exact posterior;
    `include` selects parts (and adds `summary`: quantiles and credible intervals).
    `Accept: application/vnd.apache.arrow.stream` answers the same content as an
    Arrow IPC stream (one row per observation and objective); `Accept-Encoding`
    gzip or zstd compresses large answers.
    """
    # settings, metrics and batcher: read here, not as three more dependencies (each costs ~20 us)
    state = http.app.state
    settings: Settings = state.settings
    # for the response metrics (service/metrics.py), which count every response
    http.scope[OBJECTIVE_KEY] = request.objective
    media = negotiate(field_value(http.headers, "accept"))
    y = check_request(request, served, settings, state.registry)
    parts = check_parts(request)
    check_version(request.version, request.objective, served, state.registry.models)  # not served: a 409
    seed = request.seed if request.seed is not None else draw_seed()
    query = PosteriorQuery(
        served,
        y,
        request.objective,
        request.num_samples,
        seed,
        request.resample,
        request.cross_check,
        settings.cross_check_samples,
        batch=isinstance(request.y, list),
        parts=parts,
        media=media,
        compute_threads=settings.compute_threads,
    )
    check_cost(query, settings)
    started = time.perf_counter()
    heavy = query.size > settings.offload_samples  # draws of every objective and of the cross-check
    admission: HeavyAdmission = state.admission
    token = await admission.enter(query.size) if heavy else None  # heavy: a few at a time (service/admission.py)
    try:
        if heavy:  # off the event loop
            results = await run_in_threadpool(answer, query)
        elif settings.micro_batch:
            results = await state.batcher.answer(query)
        else:
            results = answer(query)
        answered = time.perf_counter()
        metrics: Metrics = state.metrics
        metrics.answered(served.name, len(y))
        if media == "arrow":
            metadata = {"model": served.name, "seed": str(seed), "batch": str(isinstance(request.y, list)).lower()}
            body, media_type = arrow.stream(results, metadata), arrow.MEDIA_TYPE
        elif isinstance(request.y, list):
            body, media_type = json_bytes({"model": served.name, "seed": seed, "results": results}), JSON
        else:
            body, media_type = json_bytes(results[0]), JSON
        # where the server's time went (W3C Server-Timing, ms): the answer (a micro-batch's wait included), the bytes
        answer_ms, serialise_ms = 1e3 * (answered - started), 1e3 * (time.perf_counter() - answered)
        timing = f"answer;dur={answer_ms:.2f}, serialise;dur={serialise_ms:.2f}"
        response = Response(body, media_type=media_type, headers={**VARY_ACCEPT, "Server-Timing": timing})
    except BaseException:
        if token is not None:
            admission.leave(token)
        raise
    if token is not None:  # the place is held until the answer's bytes have gone to the client
        del results
        return admission.held(token, response)
    return response


@router.get(
    "/{model}/posterior.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "q of each compiled objective against the exact posterior"},
        404: ERRORS[404],
        **QUERY_ERRORS,
    },
    summary="Figure: q for each objective against the exact posterior at y",
)
def posterior_png(
    y: Annotated[
        QueryY,
        Query(description="the observation", examples=[0.0]),
    ],
    served: KnownQueryModelDep,
    objective: Annotated[
        Literal["pq", "qp", "both"],
        Query(description="which compiled network(s) to draw: pq, qp, or both (every compiled one)"),
    ] = "both",
    width: Annotated[
        Annotated[int, Field(ge=320, le=2400), WHOLE_TEXT] | None,
        Query(description="image width in pixels (default: 640)"),
    ] = None,
    height: Annotated[
        Annotated[int, Field(ge=240, le=2400), WHOLE_TEXT] | None,
        Query(description="image height in pixels (default: 430, or 750 with discrete latents)"),
    ] = None,
) -> Response:
    artifacts = served.artifacts
    if objective != "both" and objective not in artifacts:
        available = ", ".join(sorted(artifacts))
        raise ApiError(
            404,
            ["query", "objective"],
            f"{objective} is not compiled for {served.name}; available: {available}",
            "not_found",
        )
    wanted = sorted(artifacts) if objective == "both" else [objective]
    size = None
    if width is not None or height is not None:
        size = (width or PNG_WIDTH, height or (PNG_HEIGHT_BRANCHES if served.model.num_branches > 1 else PNG_HEIGHT))
    with torch.inference_mode():
        qs = {name: artifacts[name].network(torch.tensor([y], dtype=torch.float32)) for name in wanted}
        model = base_model(served.model)  # the model itself, not a mixture network's view of it
        png = draw(model, y, qs, variant_title(served.name, model), size)
    return Response(png, media_type="image/png")
