"""What routes need from the app: the registry, metrics, and a served model by name."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from service.errors import ApiError
from service.metrics import Metrics
from service.registry import Registry, ServedModel


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_served_model(request: Request, model: Annotated[str, Path(description="model name, e.g. gmm_open")]) -> ServedModel:
    """The served model named in the path, or a 404 that lists the ones that exist."""
    registry = request.app.state.registry
    if model not in registry.models:
        known = ", ".join(sorted(registry.models)) or "none"
        refused = "; ".join(f"{objective}: {reason}" for objective, reason in registry.refusals(model).items())
        if refused:
            raise ApiError(404, ["path", "model"], f"model {model!r} is not served: its artifacts were refused ({refused}); served models: {known}", "refused")
        raise ApiError(404, ["path", "model"], f"unknown model {model!r}; served models: {known}", "not_found")
    return registry.models[model]


# what routes declare (FastAPI's Annotated style)
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]
