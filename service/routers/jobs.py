"""Compile on request: POST /v1/models queues a variant spec; /v1/jobs reads, lists and cancels jobs.

Compiling costs CPU, so every route here needs ``Authorization: Bearer <token>``
with the token of ``AMORTIZED_ADMIN_TOKEN`` (compared in constant time, never
logged); without that setting the routes are off (403 saying how to enable
them). The token is checked before the body is read as JSON (:class:`AdminRoute`),
so a caller without it learns nothing of its JSON's faults; how the body
travels (its size, Content-Encoding and UTF-8) is checked before, by the
middleware, as a proxy would. Queries stay open.
The queue and the job state: ``trainer/jobs.py``.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from amortized.evaluation import Replace
from amortized.inputs import quoted
from amortized.variants import SpecError, VariantSpec, parse_spec
from service.dependencies import BODY_ERRORS, QUERY_ERRORS, RegistryDep, known_query
from service.errors import MAX_ERRORS, ApiError, at_most, error_body
from service.registry import Registry
from service.responses import json_response
from service.routing import JsonRoute
from service.schemas import WHOLE_TEXT, ErrorResponse
from service.settings import Settings
from trainer.jobs import JobQueue, JobRecord

bearer = HTTPBearer(auto_error=False, description="the token of AMORTIZED_ADMIN_TOKEN")
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
ENDED = {"succeeded": "succeeded", "failed": "failed", "cancelled": "been cancelled"}  # "job ... has already ..."
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no bearer token, or not the right one"},
    403: {"model": ErrorResponse, "description": "the job endpoints are off: set AMORTIZED_ADMIN_TOKEN"},
    503: {
        "model": ErrorResponse,
        "description": "the job queue (AMORTIZED_QUEUE) cannot be reached, e.g. Redis is down: `queue_unavailable` at "
        '["queue"], naming it without credentials; Retry-After says when to try again',
    },
}


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """403 when the job endpoints are off; 401 for a missing or wrong token (hmac.compare_digest), or two of them."""
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise ApiError(
            403,
            ["header", "authorization"],
            "the job endpoints are off on this server: set AMORTIZED_ADMIN_TOKEN in its environment to enable them",
            "forbidden",
        )
    given = len(request.headers.getlist("authorization"))
    if given > 1:  # which one counts would be a guess (a proxy may add its own): refused, as a missing one is
        raise ApiError(
            401,
            ["header", "authorization"],
            f"Authorization is given {given} times: send it once",
            "unauthorized",
            UNAUTHORIZED,
        )
    if credentials is None:
        raise ApiError(
            401, ["header", "authorization"], "send Authorization: Bearer <token>", "unauthorized", UNAUTHORIZED
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise ApiError(401, ["header", "authorization"], "wrong token", "unauthorized", UNAUTHORIZED)


class AdminRoute(JsonRoute):
    """A route that checks the token (:func:`require_admin`) before FastAPI reads the body as JSON and validates it.

    FastAPI parses the body before it solves any dependency, so a body that is
    not JSON got its 422 before the 401 or 403 (FastAPI's documentation,
    "Custom Request and APIRoute class"). The router still declares ``bearer``
    as a dependency: it documents the scheme in the OpenAPI schema. The body
    is read as every JSON route reads it (:class:`service.routing.JsonRoute`:
    keys unique).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            require_admin(request, await bearer(request))
            return await handler(request)

        return checked


router = APIRouter(
    tags=["jobs"],
    dependencies=[Depends(bearer), Depends(known_query)],
    responses=ERRORS | QUERY_ERRORS,
    route_class=AdminRoute,
)


class JobAnswer(JobRecord):
    served: bool | None = Field(
        None,
        description="on success, or on a failure or cancellation after some networks were written: whether this "
        "server process already serves every version the job wrote (live reload takes about a second)",
    )


def get_queue(request: Request) -> JobQueue:
    return request.app.state.jobs


QueueDep = Annotated[JobQueue, Depends(get_queue)]
JobId = Annotated[str, Path(description="the job's id, from POST /v1/models", max_length=64)]


def answer(record: JobRecord, registry: Registry) -> dict:
    served = None
    if record.status == "succeeded" or (record.status in ("failed", "cancelled") and record.versions):
        model = registry.models.get(record.name)
        served = model is not None and all(model.versions.get(o) == v for o, v in record.versions.items())
    return {**record.model_dump(mode="json"), "served": served}


def check_limits(spec: VariantSpec, settings: Settings) -> list[dict]:
    """The job limits beyond the spec's own rules, as error items naming the field."""
    problems = []
    for objective in spec.objectives:
        steps = spec.training_config(objective).total_steps
        if steps > settings.job_max_steps:
            problems.append(
                {
                    "loc": ["body", "training", "steps"],
                    "msg": f"{objective} would take {steps} optimiser steps; a job may take at most "
                    f"{settings.job_max_steps} per objective (AMORTIZED_JOB_MAX_STEPS)",
                    "type": "too_large",
                }
            )
    branches = spec.build_model().num_branches * spec.family_options.mixture_components
    if branches > settings.job_max_branches:
        problems.append(
            {
                "loc": ["body", "params"],
                "msg": f"q would have {branches} branches (the model's discrete branches x mixture components); "
                f"a job may have at most {settings.job_max_branches} (AMORTIZED_JOB_MAX_BRANCHES)",
                "type": "too_large",
            }
        )
    return problems


def retry_after(active: list[JobRecord], workers: int) -> int:
    """Seconds until a place is likely free: the soonest estimate among running jobs, else a minute per job ahead."""
    estimates = [r.eta_seconds for r in active if r.status == "running" and r.eta_seconds is not None]
    if estimates:
        return max(1, math.ceil(min(estimates)))
    return 60 * max(1, math.ceil(len(active) / max(workers, 1)))


# Specs /docs offers for POST /v1/models ("Try it out"); tests/test_jobs.py posts each and expects its 202.
SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "gmm_sigma5": {
        "summary": "gmm with noise std 5 (both losses, the recipe's training)",
        "value": {"name": "gmm_sigma5", "family": "gmm", "params": {"sigma": 5.0}, "family_options": {"input_gain": 1}},
    },
    "gaussian_noisy": {
        "summary": "gaussian, pq only, a short training",
        "value": {
            "name": "gaussian_noisy",
            "family": "gaussian",
            "params": {"sigma": 2.0},
            "objectives": ["pq"],
            "training": {"steps": 300, "seed": 1},
        },
    },
    "gmm_open_two_universes": {
        "summary": "gmm_open with universes of its own",
        "value": {
            "name": "gmm_open_two",
            "family": "gmm_open",
            "params": {
                "universes": [
                    {"probability": 0.6, "weights": [0.5, 0.5], "means": [-4.0, 4.0], "stds": [1.0, 1.0]},
                    {"probability": 0.4, "weights": [1.0], "means": [0.0], "stds": [3.0]},
                ]
            },
        },
    },
    "gmm_mixture": {
        "summary": "gmm, qp with q a mixture of 2 normals",
        "value": {
            "name": "gmm_k2",
            "family": "gmm",
            "objectives": ["qp"],
            "family_options": {"mixture_components": 2},
        },
    },
}


@router.post(
    "/v1/models",
    status_code=202,
    response_model=JobAnswer,
    summary="Compile a variant from its spec: queued as a job (202, Location: /v1/jobs/{id})",
    description="The spec is a variant's (README, Variants): `name`, `family`, `params`, optional `objectives`, "
    "`training` and `family_options`, checked by the same rules as `python -m trainer compile --spec`. "
    "Bad specs get 422 naming each field; a name served with other parameters, or one with a job already queued or "
    "running, gets 409; a full queue gets 429 with Retry-After. Poll the job at its Location; on success the variant "
    "is served at /v1/models/{name}/posterior.",
    responses={
        **BODY_ERRORS,
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "the queue is full; Retry-After says when to try again"},
    },
)
def submit(
    request: Request,
    response: Response,
    registry: RegistryDep,
    queue: QueueDep,
    spec: Annotated[
        dict[str, Any],
        Body(
            description="a variant spec: name, family, params; optional objectives, training and family_options",
            openapi_examples=SPEC_EXAMPLES,
        ),
    ],
    replace: Annotated[
        Replace,
        Query(
            description="for a variant already served: if_better (default) keeps the served network when the new one "
            "scores clearly worse on the test set (its objective's KL; the job then fails saying so), always replaces "
            "it"
        ),
    ] = "if_better",
) -> Any:
    settings: Settings = request.app.state.settings
    try:
        variant = parse_spec(spec)
    except SpecError as error:
        items = [
            {"loc": ["body", *loc], "msg": why, "type": kind}
            for loc, (_, why), kind in zip(error.locations, error.problems, error.kinds)
        ]
        return json_response(error_body(at_most(items, MAX_ERRORS)), 422)
    problems = check_limits(variant, settings)
    if problems:
        return json_response(error_body(problems), 422)
    served = registry.models.get(variant.name)
    if served is not None:
        manifest = next(iter(served.artifacts.values())).manifest
        if (manifest.family, manifest.model_params) != (variant.family, variant.params):
            raise ApiError(
                409,
                ["body", "name"],
                f"{variant.name!r} is served with other parameters ({manifest.family} {manifest.model_params}); "
                "choose another name",
                "conflict",
            )
    active = queue.active()
    for record in active:
        if record.name == variant.name:
            raise ApiError(
                409,
                ["body", "name"],
                f"job {record.id} for {variant.name!r} is already {record.status}; wait for it or cancel it "
                f"(DELETE /v1/jobs/{record.id})",
                "conflict",
            )
    if len(active) >= settings.job_max_queued:
        raise ApiError(
            429,
            ["body"],
            f"{len(active)} jobs are queued or running, the most this server takes (AMORTIZED_JOB_MAX_QUEUED); "
            "try again later",
            "too_many_jobs",
            {"Retry-After": str(retry_after(active, settings.job_workers))},
        )
    record = queue.submit(variant, replace)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return answer(record, registry)


@router.get("/v1/jobs", response_model=list[JobAnswer], summary="Recent jobs, newest first")
def list_jobs(
    registry: RegistryDep,
    queue: QueueDep,
    limit: Annotated[int, Field(ge=1, le=200), WHOLE_TEXT, Query(description="most jobs to list")] = 50,
) -> list[dict]:
    return [answer(record, registry) for record in queue.records()[:limit]]


def found(queue: JobQueue, job_id: str) -> JobRecord:
    record = queue.read(job_id)
    if record is None:
        msg = f"no job {quoted(job_id)} (GET /v1/jobs lists the recent ones)"
        raise ApiError(404, ["path", "job_id"], msg, "not_found")
    return record


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobAnswer,
    summary="A job: status, phase, step of total, loss, time left; on success metrics and versions",
    responses={404: {"model": ErrorResponse}},
)
def get_job(job_id: JobId, registry: RegistryDep, queue: QueueDep) -> dict:
    return answer(found(queue, job_id), registry)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobAnswer,
    summary="Cancel a job: a queued one at once, a running one within about a second",
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def cancel_job(job_id: JobId, registry: RegistryDep, queue: QueueDep) -> dict:
    record = found(queue, job_id)
    if record.status not in ("queued", "running"):
        raise ApiError(409, ["path", "job_id"], f"job {job_id} has already {ENDED[record.status]}", "conflict")
    if record.status == "running" and record.phase == "save" and record.step >= record.total_steps:
        raise ApiError(
            409,
            ["path", "job_id"],
            f"job {job_id} is too late to cancel: its last artifact is being written (it will succeed; a variant "
            "is removed by deleting its folder under the artifacts folder)",
            "conflict",
        )
    cancelled = queue.cancel(job_id)
    assert cancelled is not None  # it was found above
    return answer(cancelled, registry)
