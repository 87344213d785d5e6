"""Micro-batching: posterior queries that arrive together are answered in one vectorised call.

The science is vectorised over observations, and for one observation most of
an answer's time is NumPy's fixed cost per call, not arithmetic. So queries
that reach the event loop in the same turn and ask the same thing of the same
model (objective, samples, flags) are joined: their observations are answered
as one batch and each query gets its own rows back. Nothing waits for company:
a batch runs on the loop's next turn, so a lone query is answered at once.

Each query keeps its own random generator (see :class:`GroupedGenerator`),
and every step of an answer computes an observation's row independently of
the other rows, so a seed gives the same bytes whether the query is answered
alone or beside others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.registry import ServedModel

QUIET_TURNS = 2  # turns of the event loop without a new query before a batch is answered


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

    @property
    def batch_key(self) -> Hashable:
        """Queries with the same key can share one vectorised call (networks run on them stacked)."""
        return id(self.served), len(self.y), self.objective, self.num_samples, self.resample, self.cross_check

    @property
    def size(self) -> int:
        """Observations x samples: what the query costs."""
        return len(self.y) * self.num_samples


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


def generator_for(seeds: list[int], counts: list[int]) -> np.random.Generator | GroupedGenerator:
    """One PCG64 generator per seed; grouped when there are several."""
    generators = [np.random.default_rng(seed) for seed in seeds]
    return generators[0] if len(generators) == 1 else GroupedGenerator(generators, counts)


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
