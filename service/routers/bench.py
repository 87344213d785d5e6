"""Benchmark-only endpoint (AMORTIZED_BENCH_ENDPOINTS=1): the same stack and body, a precomputed answer.

Comparing it with the posterior endpoint isolates the cost of the science
(networks, sampling, diagnostics) from the HTTP, validation and JSON costs.
"""

from functools import lru_cache

from fastapi import APIRouter, Response

from service.answers import PosteriorQuery, answer
from service.dependencies import RegistryDep
from service.registry import Registry
from service.responses import json_response
from service.routing import JsonRoute
from service.schemas import PosteriorRequest

router = APIRouter(prefix="/v1/_bench", tags=["benchmark"], include_in_schema=False, route_class=JsonRoute)


@lru_cache(maxsize=8)
def precomputed(registry: Registry, model: str, num_samples: int) -> dict:
    served = registry.models[model]
    return answer(PosteriorQuery(served, [0.0], served.objectives[0], num_samples, 0, False, True))[0]


@router.post("/bare/{model}")
async def bare(model: str, request: PosteriorRequest, registry: RegistryDep) -> Response:
    return json_response(precomputed(registry, model, request.num_samples))
