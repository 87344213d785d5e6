"""The app: ``uvicorn service.main:app`` (what ``make serve`` runs), and ``create_app(settings)`` for tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from service import errors
from service.answers import answer, answer_batch
from service.batching import MicroBatcher, Query
from service.limits import BodySizeLimit
from service.metrics import Metrics
from service.registry import Registry, ServedModel
from service.reload import describe, resolve_mode, watch_artifacts
from service.routers import bench, health, models, posterior
from service.settings import Settings, get_settings

DESCRIPTION = """
Amortized inference as a service. Compiled inference networks q(x|y) for variants of four model
families (`gaussian`, `gmm`, `gmm_discrete`, `gmm_open`; the defaults are named after their families,
`GET /v1/models` lists every variant served), each trained with two losses:
**pq** (forward KL, mass-covering) and **qp** (reverse KL, mode-seeking). Every answer names the
version of each network that produced it; a request may pin one with `"version"`.

`POST /v1/models/{model}/posterior` with `{"y": 0.0, "objective": "both"}` returns q's
parameters, samples, importance weights and diagnostics, and the exact posterior.
Importance diagnostics cannot see a mode that q misses, so each answer is cross-checked
against the other compiled network: read `diagnostics.verdict` and `diagnostics.reason`.
"""


YOUNG_COLLECTION_THRESHOLD = 50_000  # allocations between collections of the youngest generation (Python: 700)


def warm_up_model(served: ServedModel) -> None:
    """Answer one small query, so that the first real one does not compile numba's kernels (~1 s) nor copy weights."""
    objective = "both" if len(served.objectives) == 2 else served.objectives[0]
    answer(Query(served, [0.0], objective, 8, 0, resample=True, cross_check=True))


def warm_up(registry: Registry) -> None:
    """Warm up every served variant; later reloads warm up what they swap in (``registry.prepare``)."""
    for served in registry.models.values():
        warm_up_model(served)
    registry.prepare = warm_up_model


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At start: compile the kernels; then what start-up built (torch, the networks, the app) lives as long as the process.

    ``gc.freeze`` keeps those ~250k objects out of the collector's full
    passes, which otherwise stall a request now and then for ~80 ms (the p99).
    An answer allocates a few thousand containers that die young, freed by
    reference counting when the response is sent: collecting every 700
    allocations (Python's default) scanned each batch's half-built answers,
    ~10 us per request (bench/serve_benchmark.py: +4% posterior throughput).

    Then, until shutdown, this worker watches the artifacts folder and swaps
    in what changes (service/reload.py); each uvicorn worker runs its own.
    """
    settings: Settings = app.state.settings
    registry: Registry = app.state.registry
    warm_up(registry)
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    # live reload: this worker watches the artifacts folder until shutdown (service/reload.py)
    mode = resolve_mode(settings.reload)
    app.state.reload = describe(mode, settings.reload_interval)
    logging.getLogger("service.reload").info("artifacts in %s: reload %s", registry.folder, app.state.reload)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_artifacts(registry, mode, settings.reload_interval, stop))
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(watcher, 5)
        except (TimeoutError, asyncio.CancelledError):
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def create_app(settings: Settings | None = None) -> FastAPI:
    """Load and verify the artifacts, then build the app; refused artifacts are logged, the rest serve."""
    settings = settings or get_settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # small tensors: threads cost more than they save, and workers scale out instead
    app = FastAPI(title="Amortized inference service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = Registry(settings.artifacts_dir)
    app.state.reload = "not started"
    app.state.metrics = Metrics()
    app.state.batcher = MicroBatcher(answer_batch, settings.offload_samples, app.state.metrics.batch_queries.observe)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
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
