"""Admission of heavy posterior requests: a few at a time, each until its answer's bytes are gone.

A heavy request (more draws than ``AMORTIZED_OFFLOAD_SAMPLES``) holds its draws, weights and answer bytes
(about 24 bytes of JSON per draw: 115 MB for 4.8 million draws) while it is answered and sent. Twelve at once took
a server to 3.3 GB. At most ``AMORTIZED_HEAVY_CONCURRENCY`` are admitted at once (anyio's ``CapacityLimiter``,
first come first served); the others wait up to ``AMORTIZED_HEAVY_WAIT_SECONDS``, then get 503 with Retry-After.
Light requests (micro-batched) never wait here.

A place is held by a token until the response object is gone (``weakref.finalize``): after its bytes are sent, or
dropped with a client that went away, or at once when the request fails before a response exists.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import anyio

from service.errors import ApiError


class HeavyAdmission:
    """At most ``places`` heavy requests answered at once; ``wait_seconds`` the longest a request waits for one."""

    def __init__(self, places: int, wait_seconds: float, on_idle: Callable[[], None] | None = None) -> None:
        self.limiter = anyio.CapacityLimiter(places)
        self.wait_seconds = wait_seconds
        self.on_idle = on_idle  # called when the last place is freed (the server gives freed memory back)

    @property
    def in_use(self) -> int:
        return int(self.limiter.borrowed_tokens)

    async def enter(self, draws: int) -> object:
        """A token holding one place; ApiError 503 (Retry-After) when none frees up within ``wait_seconds``."""
        token = object()
        try:
            with anyio.fail_after(self.wait_seconds):
                await self.limiter.acquire_on_behalf_of(token)
        except TimeoutError:
            raise ApiError(
                503,
                ["body"],
                f"the server is answering {self.in_use} large requests (more draws than AMORTIZED_OFFLOAD_SAMPLES; "
                f"this one draws {draws}) and no place freed up within {self.wait_seconds:g} s; retry later, or ask "
                "for fewer samples or observations per request",
                "busy",
                {"Retry-After": str(max(1, math.ceil(self.wait_seconds)))},
            ) from None
        return token

    def leave(self, token: object) -> None:
        """Free ``token``'s place (once; later calls do nothing)."""
        try:
            self.limiter.release_on_behalf_of(token)
        except RuntimeError:  # already released
            return
        if self.in_use == 0 and self.on_idle is not None:
            self.on_idle()

    def hold_until_gone(self, token: object, response: Any) -> None:
        """Keep ``token``'s place until ``response`` (and so its body) is garbage, then free it."""
        weakref.finalize(response, self.leave, token)
