"""How the API's routes read a JSON body: every object's keys unique.

RFC 8259 (section 4) says the names within an object SHOULD be unique and
leaves what a duplicate means to the receiver; Python's decoder keeps the last
value, so ``{"y": 1, "y": 2}`` was answered for y = 2 without a word, and
``{"y": "x", "y": 1}`` passed validation. A route of :class:`JsonRoute` reads
its body with a decoder hook that refuses a repeated key in any object,
nested ones included (a version pin, a job's parameters): the hook
:func:`amortized.inputs.unique_keys`, which reads the trainer's spec files too;
the error handler (:func:`service.errors.http_error`) answers 422 naming the key. FastAPI's
documented way to change how a body is read ("Custom Request and APIRoute
class"); one pass of the standard decoder, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from amortized.inputs import unique_keys


class UniqueKeysRequest(Request):
    """A request whose JSON body is decoded with :func:`unique_keys` (FastAPI calls ``json()`` for JSON bodies)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=unique_keys)
        return self._json


class JsonRoute(APIRoute):
    """A route whose body is read by :class:`UniqueKeysRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def unique_keys_handler(request: Request) -> Response:
            return await handler(UniqueKeysRequest(request.scope, request.receive))

        return unique_keys_handler
