"""The app: ``uvicorn service.main:app`` (what ``make serve`` runs), and ``create_app(settings)`` for tests."""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from service import errors
from service.answers import answer_batch
from service.batching import MicroBatcher, Query
from service.limits import BodySizeLimit
from service.metrics import Metrics, ResponseMetrics
from service.registry import Registry
from service.routers import bench, health, models, posterior
from service.settings import Settings, get_settings

DESCRIPTION = """
Amortized inference as a service. Compiled inference networks q(x|y) for four models
(`gaussian`, `gmm`, `gmm_discrete`, `gmm_open`), each trained with two losses:
**pq** (forward KL, mass-covering) and **qp** (reverse KL, mode-seeking).

`POST /v1/models/{model}/posterior` with `{"y": 0.0, "objective": "both"}` returns q's
parameters, samples, importance weights and diagnostics, and the exact posterior.
Importance diagnostics cannot see a mode that q misses, so each answer is cross-checked
against the other compiled network: read `diagnostics.verdict` and `diagnostics.reason`.
"""


YOUNG_COLLECTION_THRESHOLD = 50_000  # allocations between collections of the youngest generation (Python: 700)


def warm_up(registry: Registry) -> None:
    """Answer small queries down every path of the request code, so that no real request compiles a kernel.

    numba compiles a kernel once per type signature of its arguments, and an
    array's layout is part of it: a micro-batch of several queries hands some
    kernels non-contiguous views where a lone query hands contiguous arrays.
    Warming up with one lone query left those variants to the first real batch,
    which then held the event loop for 0.4 s (gmm_open) to 0.9 s (gmm): the
    cold-start p99 at 32 connections. So every served model is asked, with
    each objective and flag, once alone and once as a batch of two queries of
    two observations (tests/test_warm_up.py checks that nothing compiles after).
    """
    for served in registry.models.values():
        objectives = served.objectives + (["both"] if len(served.objectives) == 2 else [])
        for objective, resample, cross_check in itertools.product(objectives, (False, True), (True, False)):
            answer_batch([Query(served, [0.0], objective, 8, 0, resample, cross_check)])
            answer_batch([Query(served, [0.0, 1.0], objective, 8, seed, resample, cross_check) for seed in (0, 1)])


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At start: compile the kernels; then what start-up built (torch, the networks, the app) lives as long as the process.

    ``gc.freeze`` keeps those ~250k objects out of the collector's full
    passes, which otherwise stall a request now and then for ~80 ms (the p99).
    An answer allocates a few thousand containers that die young, freed by
    reference counting when the response is sent: collecting every 700
    allocations (Python's default) scanned each batch's half-built answers,
    ~10 us per request (bench/serve_benchmark.py: +4% posterior throughput).
    """
    warm_up(app.state.registry)
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """Load and verify the artifacts, then build the app; refused artifacts are logged, the rest serve."""
    settings = settings or get_settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # small tensors: threads cost more than they save, and workers scale out instead
    app = FastAPI(title="Amortized inference service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = Registry(settings.artifacts_dir)
    app.state.metrics = Metrics()
    app.state.batcher = MicroBatcher(answer_batch, settings.offload_samples, app.state.metrics.batch_queries.observe)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # outermost: counts every response, the 413s of the body-size limit included
    app.add_middleware(ResponseMetrics, metrics=app.state.metrics, served=lambda: app.state.registry.models, templates=lambda: list(app.openapi()["paths"]))
    for router in (models.router, posterior.router, health.router):
        app.include_router(router)
    if settings.bench_endpoints:
        app.include_router(bench.router)
    return app


def __getattr__(name: str) -> FastAPI:
    """``service.main:app``, built from the environment on first access, so importing ``create_app`` loads nothing."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["app"] = application = create_app()
    return application
