"""Liveness, readiness and Prometheus metrics."""

import os

from fastapi import APIRouter, Request, Response

from service.dependencies import MetricsDep, RegistryDep
from service.responses import json_response

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="Liveness: the process answers")
def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/health/ready",
    summary="Readiness: at least one verified artifact is served; names the artifacts folder, what is served and what "
    "is refused",
    responses={
        503: {
            "description": "nothing can be served: `reason` says why (no such folder, no artifacts in it, all refused)"
        }
    },
)
def ready(registry: RegistryDep, request: Request) -> Response:
    """This worker's view: each uvicorn worker loads and reloads the folder by itself."""
    state = registry.state  # one consistent snapshot, even while a reload swaps it
    body = {
        "status": "ready" if state.models else "not ready",
        "artifacts_dir": registry.folder,
        "served": {name: served.versions for name, served in state.models.items()},
        "refused": state.refused,
        "reload": request.app.state.reload,
        "worker": os.getpid(),  # with several uvicorn workers, each answers for itself
    }
    if state.problem is not None:
        body["reason"] = state.problem
    return json_response(body, 200 if state.models else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    """Counters and histograms summed over every worker of this server; process metrics per worker (label pid)."""
    body, media_type = metrics.exposition()
    return Response(body, media_type=media_type)
