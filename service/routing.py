"""How the API's routes read a JSON body: every object's keys unique, every string Unicode.

RFC 8259 (section 4) says the names within an object SHOULD be unique and
leaves what a duplicate means to the receiver; Python's decoder keeps the last
value, so ``{"y": 1, "y": 2}`` was answered for y = 2 without a word, and
``{"y": "x", "y": 1}`` passed validation. A route of :class:`JsonRoute` reads
its body with :func:`amortized.inputs.strict_json` (which reads the trainer's
spec files too): a repeated key in any object, nested ones included (a version
pin, a job's parameters), or a lone surrogate in a key or string, is refused
with its place, and the error handler (:func:`service.errors.http_error`)
answers 422 there. FastAPI's documented way to change how a body is read
("Custom Request and APIRoute class"); one pass of the standard decoder, as
before, and a scan for surrogate escapes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from anyio import to_thread
from fastapi import Request, Response
from fastapi.routing import APIRoute

from amortized.inputs import strict_json
from service.middleware import OFF_LOOP_BYTES


class UniqueKeysRequest(Request):
    """A request whose JSON body is decoded by :func:`amortized.inputs.strict_json` (FastAPI calls ``json()``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            # a large body is decoded off the event loop: a megabyte takes 0.1 to 0.4 s (more to locate a repeated
            # key in one), during which other requests, health probes included, would wait
            self._json = (
                strict_json(body) if len(body) < OFF_LOOP_BYTES else await to_thread.run_sync(strict_json, body)
            )
        return self._json


class JsonRoute(APIRoute):
    """A route whose body is read by :class:`UniqueKeysRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def unique_keys_handler(request: Request) -> Response:
            return await handler(UniqueKeysRequest(request.scope, request.receive))

        return unique_keys_handler
