"""Prometheus metrics of the service.

Every HTTP response by route and status, posterior requests per model and objective, latency, micro-batch sizes, and the
process's memory, CPU and open files.

One process, or many: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``python -m
service`` sets it to a fresh folder at every start, for any number of
workers), every worker writes its values to files there and ``/metrics``
merges them, so a counter or histogram reads the sum over all workers,
whichever one answers the scrape. Process metrics cannot be summed that way
(prometheus_client's process collector only sees the process it runs in), so
in that mode each worker publishes its own as gauges labelled with its pid
(``multiprocess_mode="liveall"``), refreshed every few seconds and at every
scrape it answers; the series of a worker that died are dropped at the next
scrape. Without the variable (tests, in-process apps) the usual process
collector is used and each app has its own registry.

Labels never come from what a client typed: a model is a served model's name
or ``unknown``, a route is the route's template or ``unmatched``, a method one
of the HTTP methods or ``other``.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable, Collection
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
POSTERIOR_ROUTE = "/v1/models/{model}/posterior"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OBJECTIVE_KEY = "amortized.objective"  # set in the request's scope by the posterior endpoint once the body validated
PROCESS_REFRESH_SECONDS = 5.0
LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The app's metrics. Single-process: one registry per app, so that several apps (tests) never clash."""

    def __init__(self) -> None:
        self.folder = multiprocess_dir()
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "amortized_http_responses",
            "every HTTP response, by route template (unmatched: no route), method and status code",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.requests = Counter(
            "amortized_posterior_requests",
            "posterior responses by status code, every one counted: answers, validation errors (422), unknown models "
            "and objectives (404), bodies too large (413), server errors (5xx). model: a served model or 'unknown';"
            " objective: pq, qp, both, or 'none' when the body did not validate",
            ["model", "objective", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "amortized_posterior_seconds",
            "posterior request latency, from the request's arrival to the start of its response",
            ["model", "objective"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.observations = Counter(
            "amortized_observations", "observations answered", ["model"], registry=self.registry
        )
        self.batch_queries = Histogram(
            "amortized_batch_queries",
            "queries answered together in one micro-batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.heavy = Gauge(
            "amortized_heavy_answers",
            "heavy posterior requests (more draws than AMORTIZED_OFFLOAD_SAMPLES): answering (computed or being sent, "
            "each holding a place) and waiting for a place (service/admission.py); the 503s of those that waited too "
            'long are amortized_posterior_requests{code="503"}',
            ["state"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.cut_off = Counter(
            "amortized_heavy_cut_off",
            "heavy answers cut off because their client took no chunk for AMORTIZED_SEND_TIMEOUT_SECONDS (their "
            "responses began as 200, so amortized_http_responses counts them there too)",
            registry=self.registry,
        )
        self._children: dict[tuple, tuple] = {}
        self._observed: dict[str, Any] = {}  # each model's observations counter (labels() costs a lock and lookups)
        self._process_refreshed = 0.0
        if self.folder is None:
            ProcessCollector(registry=self.registry)
            self.process: dict[str, Gauge] = {}
        else:  # one series per live worker (label pid), refreshed by each worker for itself
            live: dict[str, Any] = {"multiprocess_mode": "liveall", "registry": self.registry}
            self.process = {
                "process_resident_memory_bytes": Gauge(
                    "process_resident_memory_bytes", "resident memory of each worker", **live
                ),
                "process_virtual_memory_bytes": Gauge(
                    "process_virtual_memory_bytes", "virtual memory of each worker", **live
                ),
                "process_cpu_seconds_total": Gauge(
                    "process_cpu_seconds_total", "user and system CPU time of each worker", **live
                ),
                "process_open_fds": Gauge("process_open_fds", "open file descriptors of each worker", **live),
                "process_max_fds": Gauge("process_max_fds", "most file descriptors each worker may open", **live),
                "process_start_time_seconds": Gauge(
                    "process_start_time_seconds", "start of each worker, seconds since the epoch", **live
                ),
            }
            self.workers = Gauge(
                "amortized_workers", "live worker processes", multiprocess_mode="livesum", registry=self.registry
            )
            self.workers.set(1)
            self.refresh_process()

    def record_response(
        self, route: str, method: str, code: int, model: str | None, objective: str, seconds: float
    ) -> None:
        """One HTTP response; ``model`` is set for the posterior route (a served name or "unknown")."""
        key = (route, method, code, model, objective)
        children = self._children.get(key)
        if children is None:
            status = str(code)
            children = self._children[key] = (
                self.responses.labels(route, method, status),
                (self.requests.labels(model, objective, status), self.latency.labels(model, objective))
                if model
                else None,
            )
        responses, posterior = children
        responses.inc()
        if posterior is not None:
            posterior[0].inc()
            posterior[1].observe(seconds)

    def answered(self, model: str, observations: int) -> None:
        """``observations`` more answered for ``model`` (a served name); its child counter looked up once."""
        counter = self._observed.get(model)
        if counter is None:
            counter = self._observed[model] = self.observations.labels(model)
        counter.inc(observations)

    def refresh_process(self, every: float = 0.0) -> None:
        """Multiprocess mode: this worker's process gauges, read as prometheus_client's process collector reads them.

        With ``every``, only when the last reading is older than that (seconds).
        """
        if not self.process or time.monotonic() - self._process_refreshed < every:
            return
        self._process_refreshed = time.monotonic()
        for family in ProcessCollector(registry=None).collect():
            for sample in family.samples:
                gauge = self.process.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    def exposition(self) -> tuple[bytes, str]:
        """The text of ``/metrics``: this app's registry, or every worker's files merged."""
        if self.folder is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self.refresh_process()
        forget_dead_workers(self.folder)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.folder)
        return generate_latest(merged), CONTENT_TYPE_LATEST


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that no longer run (uvicorn restarts a dead worker under a new pid)."""
    pids = {
        int(match.group(1))
        for path in glob.glob(os.path.join(folder, "gauge_live*.db"))
        if (match := LIVE_GAUGE_FILE.search(path))
    }
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, another user's
            pass


CLIENT_CLOSED = 499  # the code counted for a request whose client hung up before its answer (nginx's convention)


class ResponseMetrics:
    """ASGI middleware, outermost: counts every response by route and status code, and times the posterior route.

    It sees what the client gets: answers, validation 422s and unknown-model
    404s (raised before the endpoint runs), 413s of the body-size limit, and
    500s of unhandled errors (counted, then passed on to Starlette's handler).
    A request whose client hung up before its answer started is counted as
    499 (nginx's "client closed request"), whatever the app then did: it used to
    count as a 500 (a gzip body cut short: no response) or a 400 (FastAPI's
    "error parsing the body", sent to nobody), so a 5xx alert fired when a
    client left.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, served: Callable[[], Collection[str]], templates: Callable[[], list[str]]
    ) -> None:
        self.app, self.metrics, self.served, self.templates = app, metrics, served, templates
        self._patterns: list[tuple[str, re.Pattern]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        recorded = hung_up = False

        async def watched_receive() -> Message:
            nonlocal hung_up
            message = await receive()
            hung_up = hung_up or (message["type"] == "http.disconnect" and not recorded)
            return message

        async def send_status(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # counted before the response leaves: a client that reads /metrics right after its answer sees it
                recorded = True
                self._record(scope, CLIENT_CLOSED if hung_up else message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, watched_receive, send_status)
        except BaseException:
            if not recorded:  # Starlette's outermost handler answers 500 when nothing was sent yet
                recorded = True
                self._record(scope, CLIENT_CLOSED if hung_up else 500, time.perf_counter() - started)
            raise
        if not recorded:  # returned without a response: the server answers 500, unless nobody is there to answer
            self._record(scope, CLIENT_CLOSED if hung_up else 500, time.perf_counter() - started)

    def _record(self, scope: Scope, code: int, seconds: float) -> None:
        route = scope.get("route")
        template, path_params = getattr(route, "path", None), scope.get("path_params") or {}
        if template is None:  # answered before routing (413 of the body-size limit), or no route matched (404)
            template, path_params = self._match(scope)
        template = template or "unmatched"
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        model = objective = None
        if template == POSTERIOR_ROUTE:
            name = path_params.get("model")
            model = name if name in self.served() else "unknown"
            objective = scope.get(OBJECTIVE_KEY) or "none"
        self.metrics.record_response(template, method, code, model, objective or "", seconds)
        self.metrics.refresh_process(every=PROCESS_REFRESH_SECONDS)

    def _match(self, scope: Scope) -> tuple[str | None, dict]:
        """The documented route template whose pattern the path matches (any method), and its parameters."""
        if self._patterns is None:
            self._patterns = [(template, compile_path(template)[0]) for template in self.templates()]
        path = scope.get("path", "")
        for template, pattern in self._patterns:
            if match := pattern.match(path):
                return template, match.groupdict()
        return None, {}
