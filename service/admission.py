"""Admission of heavy posterior requests: a few at a time, each until its answer's bytes are gone.

A heavy request (more draws than ``AMORTIZED_OFFLOAD_SAMPLES``) holds its draws, weights and answer bytes
(about 24 bytes of JSON per draw: 115 MB for 4.8 million draws) while it is answered and sent. Twelve at once took
a server to 3.3 GB. At most ``AMORTIZED_HEAVY_CONCURRENCY`` are admitted at once (anyio's ``CapacityLimiter``,
first come first served); the others wait up to ``AMORTIZED_HEAVY_WAIT_SECONDS``, then get 503 with Retry-After.
Light requests (micro-batched) never wait here.

A place is held by a token until the answer's last chunk is handed to the connection (:class:`SentInChunks`:
chunks wait for the client to read), or until the response is gone unsent (``weakref.finalize``), or at once when
the request fails before a response exists. A client that takes no chunk for ``AMORTIZED_SEND_TIMEOUT_SECONDS`` is
cut off (its connection closed): a client that stopped reading held its place, and two such held every heavy request
off for as long as they kept their connections open.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import Response

from service.errors import ApiError

logger = logging.getLogger(__name__)


class HeavyAdmission:
    """At most ``places`` heavy requests answered at once by this worker process; ``wait_seconds``: the longest wait.

    Each uvicorn worker admits its own: N workers answer up to N x ``places`` heavy requests at once.

    ``send_timeout``: the longest an answer's client may take to read a chunk before it is cut off (seconds).
    """

    def __init__(
        self,
        places: int,
        wait_seconds: float,
        on_idle: Callable[[], None] | None = None,
        gauge: Any = None,
        send_timeout: float = 60.0,
        cut_off: Any = None,
    ) -> None:
        self.limiter = anyio.CapacityLimiter(places)
        self.wait_seconds, self.send_timeout = wait_seconds, send_timeout
        self.cut_off: Any = cut_off  # prometheus_client's Counter of answers cut off at the send timeout, or None
        # prometheus_client's Gauge labelled by state (service/metrics.py): answering and waiting, or None
        self.answering: Any = None if gauge is None else gauge.labels("answering")
        self.waiting: Any = None if gauge is None else gauge.labels("waiting")
        self.on_idle = on_idle  # called when the last place of a burst is freed (the server gives memory back)
        self.most = 0  # the most places in use at once since the last idle moment

    @property
    def in_use(self) -> int:
        return int(self.limiter.borrowed_tokens)

    async def enter(self, draws: int) -> object:
        """A token holding one place; ApiError 503 (Retry-After) when none frees up within ``wait_seconds``."""
        token = object()
        if self.waiting is not None:
            self.waiting.inc()
        try:
            with anyio.fail_after(self.wait_seconds):
                await self.limiter.acquire_on_behalf_of(token)
        except TimeoutError:
            raise ApiError(
                503,
                ["body"],
                f"this worker process is answering {self.in_use} large request{'s' * (self.in_use != 1)} (more draws "
                "than AMORTIZED_OFFLOAD_SAMPLES; "
                f"this one draws {draws}) and no place freed up within {self.wait_seconds:g} s; retry later, or ask "
                "for fewer samples or observations per request",
                "busy",
                {"Retry-After": str(max(1, math.ceil(self.wait_seconds)))},
            ) from None
        finally:
            if self.waiting is not None:
                self.waiting.dec()
        if self.answering is not None:
            self.answering.inc()
        self.most = max(self.most, self.in_use)
        return token

    def leave(self, token: object) -> None:
        """Free ``token``'s place (once; later calls do nothing)."""
        try:
            self.limiter.release_on_behalf_of(token)
        except RuntimeError:  # already released
            return
        if self.answering is not None:
            self.answering.dec()
        if self.in_use == 0:
            # after a burst only: answers one at a time reuse one thread's heap (the kept heap, main.keep_heap, saves
            # them page faults: a 1000 x 1000 Arrow answer took 102 ms of server time trimmed after each, 49 not)
            if self.most > 1 and self.on_idle is not None:
                self.on_idle()
            self.most = 0

    def held(self, token: object, response: Response) -> Response:
        """``response`` sent in chunks that wait for the connection (:class:`SentInChunks`).

        ``token``'s place is freed once the last chunk is handed over, when the client is cut off (no chunk taken
        within ``send_timeout``), or when the response is gone unsent (``weakref.finalize``).
        """
        held = SentInChunks(response, lambda: self.leave(token), self.send_timeout, self.cut_off)
        weakref.finalize(held, self.leave, token)
        return held


# the scope key under which the app keeps the server's own ``send`` (keep_server_send): ASGI has no message that
# drops a connection, and a response left incomplete is closed by uvicorn with ``transport.close()``, which first
# sends what its buffer holds: a client that read nothing kept its connection (and megabytes of buffer) for as long
# as it stayed open, and held up shutdown
SERVER_SEND = "amortized.server_send"


def keep_server_send(app: Any) -> None:
    """Have ``app`` (Starlette's) keep the server's own ``send`` in each HTTP scope, for :func:`abort_connection`.

    Starlette wraps ``send`` (its ServerErrorMiddleware) before any middleware the app adds sees it, so this wraps
    the whole stack it builds (``build_middleware_stack``, which Starlette calls on the first request). The key is
    removed when the request ends: the send's request-response cycle holds the scope, and a cycle per request left
    to the garbage collector stalled the server 30 ms at a time (p99 of 20 to 40 ms against 4).
    """
    build = app.build_middleware_stack

    def build_keeping_send() -> Any:
        stack = build()

        async def keeping_send(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await stack(scope, receive, send)
            scope[SERVER_SEND] = send
            try:
                await stack(scope, receive, send)
            finally:  # uvicorn's cycle holds the scope: kept, the send would make every request a reference cycle
                del scope[SERVER_SEND]

        return keeping_send

    app.build_middleware_stack = build_keeping_send


async def abort_connection(scope: Any) -> bool:
    """Drop the request's connection at once, its buffered bytes unsent (``transport.abort()``); whether it could.

    uvicorn's ``send`` is a method of its request-response cycle, which holds the connection's asyncio transport
    (httptools and h11 alike); another server, or none found, leaves the closing to the server. Then one turn of the
    event loop, so that uvicorn sees the connection lost before the app returns (else it logs the response as
    incomplete).
    """
    transport = getattr(getattr(scope.get(SERVER_SEND), "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    await anyio.sleep(0)
    return True


CHUNK_BYTES = 4 << 20  # 1 MiB chunks cost a lone fast client 16 ms more for a 16 MB answer (a wait per chunk)


class SentInChunks(Response):
    """A ready response sent in chunks of CHUNK_BYTES, then ``sent()`` called, whatever happened.

    uvicorn writes each chunk only once the connection has taken what came before (its flow control: ``send``
    waits while the transport's buffer is over its high-water mark). A whole body in one message would be copied
    into that buffer at once: with slow readers, every answer's bytes stay in memory while no place is held.
    Compression (service/middleware.py) then streams, chunk by chunk.

    A client that takes nothing for ``timeout`` seconds (a chunk of 4 MiB unread: under 70 kB/s at the default 60)
    is cut off: the answer stops there and its connection is dropped with what its buffer holds
    (:func:`abort_connection`), with a warning that says why.
    """

    def __init__(
        self, response: Response, sent: Callable[[], None], timeout: float = 60.0, cut_off: Any = None
    ) -> None:
        self.status_code, self.body, self.background = response.status_code, bytes(response.body), None
        self.raw_headers = response.raw_headers
        self.sent, self.timeout, self.cut_off = sent, timeout, cut_off

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, size, taken = self.body, len(self.body), 0
        try:
            with anyio.fail_after(self.timeout):
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            for start in range(0, max(size, 1), CHUNK_BYTES):
                end = start + CHUNK_BYTES
                with anyio.fail_after(self.timeout):  # each wait for the client to take what came before
                    await send({"type": "http.response.body", "body": body[start:end], "more_body": end < size})
                taken = min(end, size)
        except TimeoutError:
            dropped = await abort_connection(scope)
            logger.warning(
                "a client took none of its answer for %g s (AMORTIZED_SEND_TIMEOUT_SECONDS) with %d of %d bytes "
                "handed over: cut off (%s), its place freed",
                self.timeout,
                taken,
                size,
                "its connection dropped" if dropped else "its connection left to the server to close",
            )
            if self.cut_off is not None:
                self.cut_off.inc()
        finally:
            self.body = b""
            del body
            self.sent()
