"""Prometheus metrics: request counts and latency histograms per model and objective, and micro-batch sizes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """One registry per app, so that several apps (tests) never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "amortized_posterior_requests", "posterior requests; status ok, rejected (4xx) or error", ["model", "objective", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "amortized_posterior_seconds", "posterior request latency", ["model", "objective"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.observations = Counter("amortized_observations", "observations answered", ["model"], registry=self.registry)
        self.batch_queries = Histogram(
            "amortized_batch_queries", "queries answered together in one micro-batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self._children: dict[tuple[str, str, str], tuple] = {}

    def record(self, model: str, objective: str, status: str, observations: int, seconds: float) -> None:
        """One posterior request. The labelled children are looked up once per label set (``labels()`` costs ~1 us)."""
        key = (model, objective, status)
        if key not in self._children:
            self._children[key] = (self.requests.labels(*key), self.latency.labels(model, objective), self.observations.labels(model))
        requests, latency, answered = self._children[key]
        requests.inc()
        latency.observe(seconds)
        if observations:
            answered.inc(observations)
