"""The posterior endpoint: q's parameters, samples and importance-weighted diagnostics for each y.

Responses are serialised by orjson straight from numpy arrays and returned as
a ready ``Response``, which skips FastAPI's re-validation and jsonable_encoder
(about a millisecond per answer of 1000 samples); ``response_model`` still
documents the shape, and the tests validate real responses against it.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from amortized.figures import posterior_png as draw
from amortized.mixture import base_model
from service.answers import answer
from service.batching import Query as PosteriorQuery
from service.dependencies import ServedModelDep
from service.errors import ApiError
from service.metrics import Metrics
from service.registry import ServedModel
from service.responses import json_response
from service.schemas import MAX_ABS_Y, ErrorResponse, PosteriorRequest, PosteriorResponse
from service.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["posterior"])

EXAMPLES: dict[str, dict[str, Any]] = {
    "gaussian": {"summary": "gaussian: one y", "value": {"y": 1.5, "objective": "pq", "num_samples": 1000, "seed": 7}},
    "gmm": {"summary": "gmm: both losses at y = 0 (the seed's contrast)", "value": {"y": 0.0, "objective": "both", "num_samples": 1000, "seed": 7}},
    "gmm_discrete": {"summary": "gmm_discrete: a batch, with resampling", "value": {"y": [-8.0, 0.5, 12.0], "objective": "qp", "num_samples": 500, "seed": 7, "resample": True}},
    "gmm_open": {"summary": "gmm_open: one y", "value": {"y": 2.7, "objective": "pq", "num_samples": 1000, "seed": 7}},
}
ERRORS = {400: {"model": ErrorResponse, "description": "the body is not decodable text (e.g. not UTF-8)"},
          404: {"model": ErrorResponse, "description": "unknown model, or objective not compiled for it"},
          413: {"model": ErrorResponse, "description": "body too large"},
          415: {"model": ErrorResponse, "description": "the body is not sent as JSON (Content-Type: application/json)"},
          422: {"model": ErrorResponse, "description": "invalid field: the body names it and why"}}


def check_request(request: PosteriorRequest, served: ServedModel, settings: Settings) -> list[float]:
    """Limits from the environment, and objectives that exist for this model; returns y as a list."""
    y = request.y if isinstance(request.y, list) else [request.y]
    if not y:
        raise ApiError(422, ["body", "y"], "at least one observation is needed")
    if len(y) > settings.max_batch:
        raise ApiError(422, ["body", "y"], f"{len(y)} observations: at most {settings.max_batch} per request (AMORTIZED_MAX_BATCH)")
    if request.num_samples > settings.max_samples:
        raise ApiError(422, ["body", "num_samples"], f"at most {settings.max_samples} samples per observation (AMORTIZED_MAX_SAMPLES)")
    needed = ["pq", "qp"] if request.objective == "both" else [request.objective]
    missing = [o for o in needed if o not in served.artifacts]
    if missing:
        available = ", ".join(served.objectives)
        raise ApiError(404, ["body", "objective"], f"{' and '.join(missing)} is not compiled for {served.model.name}; available: {available}", "not_found")
    total = len(y) * request.num_samples * len(needed)
    if total > settings.max_total_samples:
        raise ApiError(422, ["body"], f"len(y) x num_samples x objectives = {total} exceeds {settings.max_total_samples} (AMORTIZED_MAX_TOTAL_SAMPLES)")
    return y


@router.post(
    "/{model}/posterior",
    response_model=PosteriorResponse,
    responses=ERRORS,
    summary="Posterior for observation(s) y: q, samples, log weights, diagnostics, and the exact answer",
)
async def posterior(
    request: Annotated[PosteriorRequest, Body(openapi_examples=EXAMPLES)],
    served: ServedModelDep,
    http: Request,
) -> Response:
    """A scalar y answers one object; a list answers {"results": [...]} in the same order.

    Each answer has q(.|y) as branches (latents, probability, mean, std), columnar
    samples with their log weights, importance diagnostics with a plain verdict
    (cross-checked against the other compiled network), and the exact posterior.
    """
    started = time.perf_counter()
    state = http.app.state  # settings, metrics and batcher: read here, not as three more dependencies (each costs ~20 us)
    settings: Settings = state.settings
    status, observations = "error", 0
    try:
        y = check_request(request, served, settings)
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        query = PosteriorQuery(served, y, request.objective, request.num_samples, seed, request.resample, request.cross_check)
        if query.size > settings.offload_samples:  # heavy: off the event loop, alone
            results = await run_in_threadpool(answer, query)
        elif settings.micro_batch:
            results = await state.batcher.answer(query)
        else:
            results = answer(query)
        status, observations = "ok", len(y)
        if isinstance(request.y, list):
            return json_response({"model": served.model.name, "seed": seed, "results": results})
        return json_response(results[0])
    except ApiError:
        status = "rejected"
        raise
    finally:
        metrics: Metrics = state.metrics
        metrics.record(served.model.name, request.objective, status, observations, time.perf_counter() - started)


@router.get(
    "/{model}/posterior.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "q of each compiled objective against the exact posterior"}, **ERRORS},
    summary="Figure: q for each objective against the exact posterior at y",
)
def posterior_png(
    y: Annotated[float, Query(allow_inf_nan=False, ge=-MAX_ABS_Y, le=MAX_ABS_Y, description="the observation", examples=[0.0])],
    served: ServedModelDep,
) -> Response:
    with torch.inference_mode():
        qs = {name: artifact.network(torch.tensor([y], dtype=torch.float32)) for name, artifact in served.artifacts.items()}
        png = draw(base_model(served.model), y, qs)  # the model itself, not a mixture network's view of it
    return Response(png, media_type="image/png")
