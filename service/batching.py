"""Micro-batching: posterior queries that arrive together are answered in one vectorised call.

The science is vectorised over observations, and for one observation most of
an answer's time is NumPy's fixed cost per call, not arithmetic. So queries
that reach the event loop in the same turn and ask the same thing of the same
model (objective, samples, flags) are joined: their observations are answered
as one batch and each query gets its own rows back. Nothing waits for company
beyond the event loop itself: a batch runs once ``QUIET_TURNS`` turns of the
loop have passed without a new query joining it (a lone query waits a few
microseconds).

Each observation draws from its own random generator, seeded by its row seed
(see :func:`row_seeds` and :class:`GroupedGenerator`), and every step of an
answer computes an observation's row independently of the other rows, so a
seed gives the same bytes whether the query is answered alone or beside others.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from amortized.diagnostics import DEFAULT_CHECK_SAMPLES
from service.registry import ServedModel

QUIET_TURNS = 2  # turns of the event loop without a new query before a batch is answered
SEED_BITS = 53  # drawn and derived seeds stay below 2**53: JavaScript numbers and jq hold them exactly


def draw_seed() -> int:
    """A fresh random seed below 2**53, for a request that brings none (echoed so that it can be replayed)."""
    return secrets.randbits(SEED_BITS)


def row_seeds(seed: int, count: int) -> list[int]:
    """A seed per observation of a batch request, derived from the request's by NumPy's ``SeedSequence``.

    Row i's seed is the first 53 bits of ``SeedSequence(seed, spawn_key=(i,))``'s
    state: independent streams per row (spawn keys are NumPy's documented way
    to derive them), and a row is replayed alone as a scalar request with its
    own seed, which every row echoes.
    """
    mask = (1 << SEED_BITS) - 1
    return [int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0]) & mask for i in range(count)]


@dataclass(frozen=True)
class Query:
    """One validated posterior request."""

    served: ServedModel
    y: list[float]
    objective: str
    num_samples: int
    seed: int
    resample: bool
    cross_check: bool
    check_samples: int = DEFAULT_CHECK_SAMPLES
    batch: bool = True  # y came as a list: each row gets a seed of its own, derived from ``seed``

    @property
    def batch_key(self) -> Hashable:
        """Queries with the same key can share one vectorised call (networks run on them stacked)."""
        return id(self.served), len(self.y), self.objective, self.num_samples, self.resample, self.cross_check, self.check_samples

    @property
    def row_seeds(self) -> list[int]:
        """The seed of each observation: the request's for a scalar y, else :func:`row_seeds` of it."""
        return row_seeds(self.seed, len(self.y)) if self.batch else [self.seed]

    @property
    def size(self) -> int:
        """Draws the query makes (observations x draws per observation): what it costs.

        Per objective: q's num_samples, and with the cross-check max(num_samples,
        check_samples) of each network, q's own draws serving it from
        check_samples on; resampling draws num_samples more uniforms.
        """
        n, m = self.num_samples, self.check_samples
        per_objective = n * (2 if self.resample else 1)
        if self.cross_check:
            per_objective += n if n >= m else 2 * m
        objectives = 2 if self.objective == "both" else 1
        return len(self.y) * objectives * per_objective


class GroupedGenerator:
    """Stands in for one ``np.random.Generator`` over a batch whose observations come in groups.

    Every draw of shape ``(rows, ...)`` is split by group: each group's own
    generator draws its share of rows (rows per observation x its observations),
    in the same order of calls as when that group is alone.
    """

    def __init__(self, generators: list[np.random.Generator], counts: list[int]) -> None:
        self.generators, self.counts, self.total = generators, counts, sum(counts)

    def _draw(self, method: str, shape: tuple[int, ...]) -> np.ndarray:
        per_observation, remainder = divmod(shape[0], self.total)
        if remainder:
            raise ValueError(f"{shape[0]} rows do not split over {self.total} observations")
        out, start = np.empty(shape), 0
        for generator, count in zip(self.generators, self.counts):  # each fills its own rows, in place
            stop = start + per_observation * count
            getattr(generator, method)(out=out[start:stop])
            start = stop
        return out

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw("random", shape)

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw("standard_normal", shape)


def generator_for(seeds: list[int]) -> np.random.Generator | GroupedGenerator:
    """One PCG64 generator per observation's seed; grouped when there are several.

    Every draw of an answer is made per observation from that observation's own
    stream, so a row's bytes depend on its seed and nothing else: the same alone,
    in any batch request, or in any micro-batch.
    """
    generators = [np.random.default_rng(seed) for seed in seeds]
    return generators[0] if len(generators) == 1 else GroupedGenerator(generators, [1] * len(generators))


class MicroBatcher:
    """Joins queries with the same batch key that arrive in the same turn of the event loop.

    ``answer_batch(queries)`` returns one answer per query; a batch holds at
    most ``max_size`` observations x samples (a larger query runs alone);
    ``observe(number of queries)`` is called for every batch (metrics).
    """

    def __init__(
        self, answer_batch: Callable[[list[Query]], list[Any]], max_size: int, observe: Callable[[int], None] = lambda size: None
    ) -> None:
        self.answer_batch, self.max_size, self.observe = answer_batch, max_size, observe
        self.open: dict[Hashable, list[tuple[Query, asyncio.Future]]] = {}
        self.sizes: dict[Hashable, int] = {}

    async def answer(self, query: Query) -> Any:
        loop = asyncio.get_running_loop()
        key = query.batch_key
        if key in self.open and self.sizes[key] + query.size > self.max_size:
            self._close(key)  # full: it still runs as scheduled; this query starts the next one
        if key not in self.open:
            self.open[key], self.sizes[key] = [], 0
            loop.call_soon(self._run, key, self.open[key], 0, 1)
        future = loop.create_future()
        self.open[key].append((query, future))
        self.sizes[key] += query.size
        return await future

    def _close(self, key: Hashable) -> None:
        del self.open[key], self.sizes[key]

    def _run(self, key: Hashable, batch: list[tuple[Query, asyncio.Future]], quiet_turns: int, seen: int) -> None:
        """Answer ``batch`` once it has stopped growing, then hand each query its answer.

        A request read from its socket in one turn of the loop joins the batch
        in the next, so the batch waits for ``QUIET_TURNS`` turns without a new
        arrival (a lone query waits a few microseconds).
        """
        if len(batch) > seen:
            quiet_turns, seen = 0, len(batch)
        if quiet_turns < QUIET_TURNS and self.open.get(key) is batch:
            asyncio.get_running_loop().call_soon(self._run, key, batch, quiet_turns + 1, seen)
            return
        if self.open.get(key) is batch:
            self._close(key)
        self.observe(len(batch))
        try:
            answers = self.answer_batch([query for query, _ in batch])
        except Exception as error:  # every waiting request sees the failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():  # a client that went away cancels its own future only
                future.set_result(answer)
