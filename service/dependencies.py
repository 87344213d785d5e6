"""What routes need from the app: registry, metrics, a variant by name, a pinned version, the query string's names."""

from __future__ import annotations

from collections.abc import Mapping
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from amortized.inputs import quoted
from service.errors import ApiError
from service.metrics import Metrics
from service.registry import Registry, ServedModel
from service.schemas import ErrorResponse

if TYPE_CHECKING:
    from amortized.losses import Objective


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ModelName = Annotated[str, Path(description="variant name, e.g. gmm_open or gmm_sigma5 (GET /v1/models lists them)")]


async def get_served_model(request: Request, model: ModelName) -> ServedModel:
    """The served variant named in the path, or a 404 that lists the ones that exist.

    The request keeps this object to the end: a reload that swaps in new
    weights meanwhile does not change the version that answers it.
    """
    models = request.app.state.registry.models  # one snapshot
    served = models.get(model)
    if served is None:
        known = ", ".join(sorted(models)) or "none"
        refused = "; ".join(
            f"{objective}: {reason}" for objective, reason in request.app.state.registry.refusals(model).items()
        )
        if refused:
            raise ApiError(
                404,
                ["path", "model"],
                f"model {quoted(model)} is not served: its artifacts were refused ({refused}); served models: {known}",
                "refused",
            )
        raise ApiError(404, ["path", "model"], f"unknown model {quoted(model)}; served models: {known}", "not_found")
    return served


def check_version(
    pin: str | dict[Objective, str] | dict[str, str] | None,
    objective: str,
    served: ServedModel,
    models: Mapping[str, ServedModel] | None = None,
) -> None:
    """A pinned ``version`` must be what is served, else 409 naming the served versions.

    A string pins the network of the requested objective; a mapping pins each
    objective it names (with "both", or to pin the cross-check's network too).
    A version is the 16 hex digits of /v1/models (the weights' sha256 may be
    given in full).
    """
    if pin is None:
        return
    if isinstance(pin, str):
        if objective == "both":
            raise ApiError(
                422, ["body", "version"], 'with objective "both", pin each network by objective: {"pq": ..., "qp": ...}'
            )
        pin, at = {objective: pin}, False
    else:
        at = True  # a mapping: the error is at the objective's pin
    for name, wanted in pin.items():
        artifact = served.artifacts.get(name)
        if artifact is None or wanted not in (artifact.version, artifact.manifest.weights.sha256):
            available = ", ".join(f"{o} {v}" for o, v in served.versions.items()) or "none"
            owners = [  # whose network it is: this model's other objective, or another served model's
                (model.name, o)
                for model in [served, *(m for m in (models or {}).values() if m.name != served.name)]
                for o, a in model.artifacts.items()
                if wanted in (a.version, a.manifest.weights.sha256)
            ]
            if owners and owners[0][0] == served.name:
                why = f"version {wanted} is {served.name}'s {owners[0][1]} network, not its {name} network"
            elif owners:
                why = f"version {wanted} is {owners[0][0]}'s {owners[0][1]} network, not one of {served.name}'s"
            else:
                why = f"version {wanted} of {served.name}/{name} is not served"
            where: list[str | int] = ["body", "version", name] if at else ["body", "version"]
            raise ApiError(409, where, f"{why}; served versions: {available}", "conflict")


async def get_served_model_known_query(request: Request, model: ModelName) -> ServedModel:
    """:func:`get_served_model`, then :func:`known_query`: one dependency for a router whose every route names a model.

    FastAPI spends about 5 us per dependency per request, on the posterior route's path too; the unknown model's 404
    still comes before the query string's 422.
    """
    served = await get_served_model(request, model)
    await known_query(request)
    return served


# what every route of a router with known_query may answer, for its OpenAPI description
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorResponse,
        "description": "a query parameter the route does not take, one given twice, or a value it refuses: "
        "the body names it and why",
    }
}


# what every route that reads a body may answer before it is read (service/middleware.py), for its OpenAPI description
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "the body is not UTF-8 text or does not decode as its Content-Encoding, or Content-Type is "
        "given more than once",
    },
    408: {"model": ErrorResponse, "description": "the body stopped arriving (AMORTIZED_BODY_TIMEOUT_SECONDS)"},
    413: {
        "model": ErrorResponse,
        "description": "the body is larger than AMORTIZED_MAX_BODY_BYTES, as sent or once decoded",
    },
    415: {
        "model": ErrorResponse,
        "description": "the body is not sent as JSON (Content-Type: application/json), its charset is not UTF-8, "
        "or its Content-Encoding is not gzip",
    },
}


async def known_query(request: Request) -> None:
    """422 naming a query parameter the route does not take, or one given twice that takes one value.

    FastAPI ignores both: a misspelt optional parameter (``posterior.png?y=0&objetive=qp``) silently answered with
    its default, and a repeated one (``?y=0&y=1``) with its last value. The request body rejects unknown fields
    (``extra="forbid"``); the query string now says no as clearly. A router-level dependency of the API's routers
    (the pages' URLs carry the explorer's state, read by the page itself, and are left alone), or part of
    :data:`KnownQueryModelDep` where every route of a router names a model.
    """
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return  # the posterior route's requests carry none: nothing to look up
    model = request.path_params.get("model")
    if model is not None and model not in request.app.state.registry.models:
        return  # an unknown model's 404 comes first (get_served_model): the query is not that route's to judge
    taken = _taken(route)
    for name in request.query_params:
        param = taken.get(name)
        if param is None:
            known = ", ".join(sorted(taken)) or "none"
            raise ApiError(422, ["query", name], f"unknown query parameter {quoted(name)}; this route takes: {known}")
        count = len(request.query_params.getlist(name))
        if count > 1 and not _takes_several(param.field_info.annotation):
            raise ApiError(422, ["query", name], f"{name} takes one value, got {count}")


_TAKEN: dict[int, tuple[APIRoute, dict[str, Any]]] = {}  # by id: an APIRoute defines __eq__, so is not hashable


def _taken(route: APIRoute) -> dict[str, Any]:
    """A route's query parameters by name, its dependencies' included (looked up once per route)."""
    cached = _TAKEN.get(id(route))
    if cached is None or cached[0] is not route:
        cached = _TAKEN[id(route)] = (route, {param.alias: param for param in _query_params(route.dependant)})
    return cached[1]


def _query_params(dependant: Dependant) -> list[Any]:
    """The query parameters of a route and of every dependency it declares (FastAPI's ``ModelField`` each)."""
    return [*dependant.query_params, *(p for sub in dependant.dependencies for p in _query_params(sub))]


def _takes_several(annotation: object) -> bool:
    """Whether a query parameter's annotation is a list (or a union with one), which FastAPI fills from repeats."""
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return origin in (Union, UnionType) and any(_takes_several(arg) for arg in get_args(annotation))


# what routes declare (FastAPI's Annotated style)
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]
# for routers whose every route names a model, in place of a router-level known_query
KnownQueryModelDep = Annotated[ServedModel, Depends(get_served_model_known_query)]
