"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Response

from service.dependencies import MetricsDep, RegistryDep
from service.responses import json_response

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="Liveness: the process answers")
def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", summary="Readiness: at least one verified artifact is served", responses={503: {"description": "no artifact could be loaded"}})
def ready(registry: RegistryDep) -> Response:
    body = {
        "status": "ready" if registry.ready else "not ready",
        "served": {name: served.objectives for name, served in registry.models.items()},
        "refused": registry.refused,
    }
    return json_response(body, 200 if registry.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    """Counters and histograms summed over every worker of this server; process metrics per worker (label pid)."""
    body, media_type = metrics.exposition()
    return Response(body, media_type=media_type)
