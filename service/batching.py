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
(see :mod:`amortized.importance.streams`), and every step of an
answer computes an observation's row independently of the other rows, so a
seed gives the same bytes whether the query is answered alone or beside others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.answers import PosteriorQuery

# turns of the event loop without a new query before a batch is answered: with two, once answers got faster, a
# batch closed before the last of wrk's 8 connections had been read (6.6 queries per batch on average against 8.0),
# and each query bore more of the batch's fixed cost; a lone query does not measurably wait for the third
QUIET_TURNS = 3


class MicroBatcher:
    """Joins queries with the same batch key that arrive in the same turn of the event loop.

    ``answer_batch(queries)`` returns one answer per query; a batch holds at
    most ``max_size`` draws (``query.size``; a larger query runs alone);
    ``observe(number of queries)`` is called for every batch (metrics).
    """

    def __init__(
        self,
        answer_batch: Callable[[list[PosteriorQuery]], list[Any]],
        max_size: int,
        observe: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.answer_batch, self.max_size, self.observe = answer_batch, max_size, observe
        self.open: dict[Hashable, list[tuple[PosteriorQuery, asyncio.Future]]] = {}
        self.sizes: dict[Hashable, int] = {}

    async def answer(self, query: PosteriorQuery) -> Any:
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

    def _run(
        self, key: Hashable, batch: list[tuple[PosteriorQuery, asyncio.Future]], quiet_turns: int, seen: int
    ) -> None:
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
