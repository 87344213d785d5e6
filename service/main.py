"""The app factory: ``create_app(settings)``.

``python -m service`` serves it as ``uvicorn --factory service.main:create_app``.

Building an app changes nothing process-wide; what a serving process sets for
itself (torch's threads, the garbage collector) it sets when the app starts
(:func:`lifespan`), and logging is configured by the entry point (``service/__main__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import itertools
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from amortized.diagnostics import DEFAULT_CHECK_SAMPLES
from service import errors
from service.admission import HeavyAdmission, keep_server_send
from service.answers import PosteriorQuery, answer_batch
from service.batching import MicroBatcher
from service.consumer import supervise
from service.metrics import Metrics, ResponseMetrics
from service.middleware import (
    BodySizeLimit,
    BodyTimeout,
    ContentEncoding,
    HeadAsGet,
    ResponseCompression,
    Utf8Json,
)
from service.registry import Registry, ServedModel
from service.reload import describe, resolve_mode, watch_artifacts
from service.routers import bench, exact, health, jobs, models, pages, posterior
from service.schemas import SUMMARY_SOURCES, resolve_parts
from service.settings import Settings, get_settings, settings_refusal
from trainer.jobs import UNAVAILABLE, JobQueue, is_embedded, public_url

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
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_heap(size: int) -> bool:
    """Serve arrays up to ``size`` bytes from the heap, and keep up to ``size`` freed bytes there (glibc only).

    glibc maps an allocation above its mmap threshold (at most 32 MB by its own
    adjustment) afresh and unmaps it when freed, so every page of every large
    array faults again on first touch: a batch of 1000 observations x 1000
    samples allocates arrays of 16 MB and more, and its answer took 215 ms of
    CPU (468 ms wall) with glibc's defaults, 165 ms (203 ms wall) with 1 GiB
    thresholds, in process on this shared machine (README, Performance).
    ``mallopt`` (malloc(3)) raises both thresholds; the cost is resident memory
    kept after a large request, at most ``size``. Returns whether it was set:
    False for ``size`` 0 or without glibc.
    """
    mallopt = getattr(libc(), "mallopt", None)
    if not size or mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, size))


@functools.cache
def libc() -> Any:
    """The C library (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Give the heap's free pages back to the system, in every thread's arena (glibc's malloc_trim(3); no-op elsewhere).

    The trim threshold of :func:`keep_heap` applies to each arena on its own, and every thread that answered a
    heavy request has one: twelve 4-million-draw answers left 2.9 GB resident with two admitted at a time
    (bench/heavy_answers.py). Called when the last answer of a burst of heavy requests (more than one at once) is
    gone (service/admission.py); answers one at a time keep the one thread's heap, as keep_heap means.
    """
    malloc_trim = getattr(libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def warm_up_model(served: ServedModel, check_samples: int = DEFAULT_CHECK_SAMPLES) -> None:
    """Answer small queries down every path of the request code, so that no real request compiles a kernel.

    numba compiles a kernel once per type signature of its arguments, and an
    array's layout is part of it: a micro-batch of several queries hands some
    kernels non-contiguous views where a lone query hands contiguous arrays.
    Warming up with one lone query left those variants to the first real batch,
    which then held the event loop for 0.4 s (gmm_open) to 0.9 s (gmm): the
    cold-start p99 at 32 connections. So the model is asked, with each
    objective and flag, once alone and once as a batch of two queries of two
    observations, below and at the cross-check's budget (below it the check
    draws its own; from it on q's draws serve it, as strided views)
    (tests/test_warm_up.py checks that nothing compiles after).
    The networks' NumPy weights are copied then too.
    """
    objectives = served.objectives + (["both"] if len(served.objectives) == 2 else [])
    for objective, resample, cross_check, n in itertools.product(
        objectives, (False, True), (True, False), (8, check_samples)
    ):
        answer_batch([PosteriorQuery(served, [0.0], objective, n, 0, resample, cross_check, check_samples)])
        answer_batch(
            [
                PosteriorQuery(served, [0.0, 1.0], objective, n, seed, resample, cross_check, check_samples)
                for seed in (0, 1)
            ]
        )
    # the summaries' compiled quantile function (amortized.summaries), with and without draws
    for n in (0, 8):
        parts = resolve_parts([s for s in SUMMARY_SOURCES if n or s != "summary.weighted"], n, False)
        answer_batch(
            [PosteriorQuery(served, [0.0], served.objectives[0], n, 0, False, True, check_samples, parts=parts)]
        )


def warm_up(registry: Registry, check_samples: int = DEFAULT_CHECK_SAMPLES) -> None:
    """Warm up every served variant; later reloads warm up what they swap in (``registry.prepare``)."""
    for served in registry.models.values():
        warm_up_model(served, check_samples)
    registry.prepare = functools.partial(warm_up_model, check_samples=check_samples)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At start, in each serving process: one torch thread, compile the kernels.

    Then what start-up built (torch, the networks, the app) lives as long as the process.

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
    # small tensors (the PNG route): threads cost more than they save; workers scale out instead
    torch.set_num_threads(1)
    if settings.heap_bytes and not keep_heap(settings.heap_bytes):
        logging.getLogger("service.main").info("not glibc's malloc: AMORTIZED_HEAP_BYTES has no effect")
    warm_up(registry, settings.cross_check_samples)
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    # live reload: this worker watches the artifacts folder until shutdown (service/reload.py)
    mode = resolve_mode(settings.reload)
    app.state.reload = describe(mode, settings.reload_interval)
    logging.getLogger("service.reload").info("artifacts in %s: reload %s", registry.folder, app.state.reload)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_artifacts(registry, mode, settings.reload_interval, stop))
    # compile on request: with a SQLite queue the server runs the consumer (one per machine: service/consumer.py)
    embedded = settings.embedded_worker
    if embedded is None:
        embedded = is_embedded(settings.queue_url)
    consumer = asyncio.create_task(supervise(settings, stop)) if app.state.jobs is not None and embedded else None
    try:
        yield
    finally:
        stop.set()
        if consumer is not None:
            await consumer
        try:
            await asyncio.wait_for(watcher, 5)
        except (TimeoutError, asyncio.CancelledError):
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


MIN_ADMIN_TOKEN = 16  # characters; the README's command makes 43 (32 random bytes)
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # b64token (RFC 6750, 2.1)


def startup_refusal() -> str | None:
    """Why the server would not start with this environment's settings, in a sentence (None: it would).

    Settings out of their range (:func:`service.settings.settings_refusal`), an admin token no client should or
    could use, or a job queue that cannot be opened. ``python -m service`` asks before uvicorn starts: a worker that
    failed at start printed a traceback, and with several workers uvicorn restarted them for ever.
    """
    try:
        settings = get_settings()  # cached: with one worker, create_app then reads the same object
    except ValidationError as error:  # and the token's own problem, so that one start names every problem
        token = Settings._empty_is_unset(os.environ.get("AMORTIZED_ADMIN_TOKEN"))  # the setting's own blank rule
        return "; ".join(filter(None, [settings_refusal(error), admin_token_refusal(str(token)) if token else None]))
    try:
        open_jobs(settings, warn=False)
    except RuntimeError as error:
        return str(error)
    return None


def admin_token_refusal(token: str) -> str | None:
    """Why an admin token cannot serve (never saying it: only its length and the rule), or None."""
    make = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if len(token) < MIN_ADMIN_TOKEN:
        return (
            f"AMORTIZED_ADMIN_TOKEN has {len(token)} character{'s' * (len(token) != 1)}: a bearer token guessable "
            f"by trying is no lock; use at least {MIN_ADMIN_TOKEN} random ones, e.g. {make}"
        )
    if not BEARER_TOKEN.fullmatch(token):
        return (
            "AMORTIZED_ADMIN_TOKEN holds characters a bearer token cannot (RFC 6750, 2.1: letters and digits of "
            f"ASCII, - . _ ~ + /, then = at the end): a client could not send it as set; make one with {make}"
        )
    return None


def open_jobs(settings: Settings, warn: bool = True) -> JobQueue | None:
    """The job queue when the job endpoints are on (AMORTIZED_ADMIN_TOKEN), else None; says why if it cannot open.

    Raises RuntimeError for a token under MIN_ADMIN_TOKEN characters or outside RFC 6750's b64token (never saying
    it), or a queue that cannot be opened; ``warn``: log the warning for a SQLite queue without its embedded worker.
    """
    if settings.admin_token is None:
        return None
    refusal = admin_token_refusal(settings.admin_token.get_secret_value())
    if refusal:
        raise RuntimeError(refusal)
    if warn and settings.embedded_worker is False and is_embedded(settings.queue_url):
        logging.getLogger("service.jobs").warning(
            "AMORTIZED_EMBEDDED_WORKER=0 with the SQLite queue %s: jobs wait until a worker on this machine consumes "
            "it (python -m trainer worker); a queued job's record says so after %g s",
            settings.queue_url,
            settings.job_stale_seconds,
        )
    try:
        queue = JobQueue(settings.queue_url, settings.artifacts_dir, settings.job_stale_seconds)
    except (OSError, ValueError, sqlite3.Error) as error:
        raise RuntimeError(
            f"AMORTIZED_ADMIN_TOKEN is set, but the job queue {public_url(settings.queue_url)} cannot be opened "
            f"({error}); set AMORTIZED_QUEUE to a writable sqlite:///path or a redis:// URL"
        ) from error
    try:  # a Redis queue may come up after the server: its routes answer 503 until then (service/errors.py)
        queue.consumer_seen()
    except UNAVAILABLE as error:
        if warn:
            logging.getLogger("service.jobs").warning(
                "the job queue %s cannot be reached or used now (%s): the job routes answer 503 until it can",
                public_url(settings.queue_url),
                error,
            )
    return queue


def create_app(settings: Settings | None = None) -> FastAPI:
    """Load and verify the artifacts, then build the app; refused artifacts are logged, the rest serve."""
    settings = settings or get_settings()
    # /docs: Swagger UI served from the fastapi-offline package, no CDN (/redoc: routers/pages.py)
    app = FastAPIOffline(
        title="Amortized inference service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/static/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = Registry(settings.artifacts_dir)
    app.state.reload = "not started"
    app.state.metrics = Metrics()
    # the job queue (trainer/jobs.py), opened only when the job endpoints are on
    app.state.jobs = open_jobs(settings)
    app.state.admission = HeavyAdmission(
        settings.heavy_concurrency,
        settings.heavy_wait_seconds,
        on_idle=trim_heap,
        gauge=app.state.metrics.heavy,
        send_timeout=settings.send_timeout_seconds,
        cut_off=app.state.metrics.cut_off,
    )
    app.state.batcher = MicroBatcher(answer_batch, settings.offload_samples, app.state.metrics.batch_queries.observe)
    errors.install(app)
    keep_server_send(app)
    # the last added runs first: HEAD as GET, then the raw size limit and the body's timeout, then decoding (itself
    # size-limited), then the decoded JSON body's UTF-8 check
    app.add_middleware(Utf8Json)
    app.add_middleware(ContentEncoding, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_seconds)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        ResponseCompression,
        minimum_size=settings.compress_min_bytes,
        gzip_level=settings.gzip_level,
        zstd_level=settings.zstd_level,
    )
    # outermost: counts every response, the 413s of the body-size limit included
    app.add_middleware(
        ResponseMetrics,
        metrics=app.state.metrics,
        served=lambda: app.state.registry.models,
        templates=lambda: list(app.openapi()["paths"]),
    )
    for router in (models.router, posterior.router, exact.router, health.router, jobs.router):
        app.include_router(router)
    pages.install(app)  # / and /explore, and their static files
    if settings.bench_endpoints:
        app.include_router(bench.router)
    return app
