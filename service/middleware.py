"""ASGI middlewares that shape requests before routing: body timeout, body-size limit, Content-Encoding, HEAD.

- :class:`BodyTimeout`: 408 when a body stops arriving, so a client that sends
  less than its Content-Length does not hold a request open for ever.
- :class:`BodySizeLimit`: 413 while the body streams in, so an oversized request never fills memory.
- :class:`ContentEncoding`: gzip bodies are decoded (within the size limit), other encodings refused.
  Without it, a gzip body reached the JSON parser as bytes (a generic 400) and
  a plain body labelled gzip was accepted as if unlabelled. Decoding
  (:class:`GzipMembers`) uses the standard library's zlib, member after member
  as the body arrives; the decoded size is bounded as it inflates, so a small
  compressed body cannot expand into memory (a "zip bomb"); bytes after the
  gzip data that begin no member are refused.
- :class:`Utf8Json` (added inside ContentEncoding in service/main.py, so it sees decoded bodies): a JSON
  body that is not UTF-8 gets 400 naming its first offending byte, UTF-16 and UTF-32 by name; a charset
  other than UTF-8 gets 415, and a second Content-Type 400.
- :class:`HeadAsGet`: HEAD answers wherever GET does.

- :class:`ResponseCompression`: answers above a size threshold compressed as
  the client's ``Accept-Encoding`` allows: zstd (the ``zstandard`` bindings of
  the reference library) or gzip, by Starlette's own responders (which add
  ``Vary: Accept-Encoding`` and move large bodies off the event loop).

The four body middlewares act on requests whose method carries a body the API
reads (:data:`BODY_METHODS`: POST, PUT, PATCH); a GET, HEAD, DELETE or OPTIONS
passes untouched, whatever its headers say. A stray ``Content-Encoding: br``
or a second Content-Type on a bodyless GET made a liveness probe fail (415,
400), and the OpenAPI, which lists no body errors for GET routes, was wrong.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable

import anyio.to_thread
import zstandard
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipResponder, IdentityResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amortized.inputs import quoted, shown
from service.errors import declared_charsets, not_utf8, reads_as_json, send_error

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # methods whose body a route of this API reads


def carries_body(scope: Scope) -> bool:
    """Whether a request's body is for the app to read: an HTTP request whose method is one of :data:`BODY_METHODS`."""
    return scope["type"] == "http" and scope["method"] in BODY_METHODS


class BodyTimeout:
    """ASGI middleware: 408 naming the body when no part of it arrives for ``seconds`` while more is due.

    uvicorn waits for a request body as long as the connection stays open, so
    a client that declared more bytes than it sent (or stalled) held its
    request, and a task of the server, for ever. Only the body is timed: once
    its last part has arrived, or once a response has started (Starlette's
    file and streaming responses await ``receive`` to notice a disconnect
    while they send, even for a body that never completed), ``receive``
    passes through untouched. A request whose headers never end (or a
    connection that sends nothing) never reaches any middleware, and uvicorn
    keeps it open; in a deployment the load balancer's header timeout closes
    it (``timeout http-request`` in deploy/haproxy/haproxy.cfg).
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds
        self.message = (
            f"the request body stopped arriving: nothing more in {seconds:g} s (AMORTIZED_BODY_TIMEOUT_SECONDS); "
            "was less sent than Content-Length says?"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not carries_body(scope):
            return await self.app(scope, receive, send)
        done = False

        async def timed_receive() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                incoming = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                # and the connection closes: what the client meant as the rest of this body cannot start a request
                raise HTTPException(status_code=408, detail=self.message, headers={"Connection": "close"}) from None
            done = done or incoming["type"] != "http.request" or not incoming.get("more_body", False)
            return incoming

        async def marked_send(outgoing: Message) -> None:
            nonlocal done
            done = done or outgoing["type"] == "http.response.start"  # answering: no 408 can follow
            await send(outgoing)

        await self.app(scope, timed_receive, marked_send)


class BodySizeLimit:
    """ASGI middleware: 413 when Content-Length, or the bytes actually received, exceed ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not carries_body(scope):
            return await self.app(scope, receive, send)
        message = f"request body larger than {self.max_bytes} bytes (AMORTIZED_MAX_BODY_BYTES)"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await send_error(send, 413, ["body"], message, "http_413")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(status_code=413, detail=message)
            return incoming

        await self.app(scope, limited_receive, send)


class Refusal(Exception):
    """A request refused before routing: the 4xx :func:`send_error` sends (status, where, why, type)."""

    def __init__(self, status: int, loc: list[str | int], msg: str, kind: str) -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.kind = status, loc, msg, kind


async def read_body(receive: Receive, consume: Callable[[bytes], None]) -> bool:
    """Hand each part of the request body to ``consume`` as it arrives; False when the client hung up first.

    The outer middlewares' HTTPException (413 past the raw size limit, 408 for a stalled body) and ``consume``'s
    :class:`Refusal` propagate: :func:`refusing` answers them.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        consume(message.get("body", b""))
        if not message.get("more_body", False):
            return True


async def refusing(send: Send, error: Exception) -> None:
    """Answer an error raised while reading the body: a :class:`Refusal`, or an HTTPException at ``["body"]``."""
    if isinstance(error, Refusal):
        return await send_error(send, error.status, error.loc, error.msg, error.kind)
    assert isinstance(error, HTTPException)
    kind = f"http_{error.status_code}"
    await send_error(send, error.status_code, ["body"], str(error.detail), kind, error.headers)


def replay(receive: Receive, body: bytes) -> Receive:
    """``receive`` for the app inside: the whole ``body`` in one message, then the connection's own (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip member (RFC 1952, 2.3.1)


class GzipMembers:
    """Incremental decoder of a gzip body: every member, at most ``max_bytes`` decoded across all of them.

    A gzip file is a series of members (RFC 1952, 2.2), each compressed on its
    own; ``gunzip`` and Python's ``gzip.decompress`` decode them all, and so
    does this (one zlib stream per member: zlib stops at the end of the first,
    which cut a two-member body to its first). After a member may come NUL
    padding (both skip it) or another member; any other byte is refused, as
    Python refuses it, where the one-member decoder dropped it silently. The
    decoded size is bounded as it inflates, across members, so neither one
    member nor many small ones can expand into memory (a "zip bomb"). Input is
    inflated in pieces of at most :attr:`PIECE` bytes: zlib copies the input
    after a member's end (``unused_data``), so whole-body calls made a body of
    many tiny members quadratic (Python's ``gzip.decompress`` takes 3 s on 1 MB
    of empty members); by pieces, each copy is at most a piece.
    """

    PIECE = 4096

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0  # decoded bytes so far
        self.received = 0  # raw bytes fed so far
        self.members = 0  # members decoded to their end
        self.inflater: zlib._Decompress | None = None  # the member being decoded; None between members
        self.between = b""  # after a member: bytes too few yet to tell whether another member begins

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.PIECE):
            piece = view[start : start + self.PIECE]
            self.received += len(piece)
            self._feed(piece)

    def _feed(self, data: bytes | memoryview) -> None:
        while data:
            if self.inflater is None:
                if self.members:  # after a member: another one, NUL padding (gzip(1) and Python skip it), or neither
                    head = (self.between + bytes(data)).lstrip(b"\x00")
                    if not GZIP_MAGIC.startswith(head[: len(GZIP_MAGIC)]):
                        bad = 0 if head[0] != GZIP_MAGIC[0] else 1
                        msg = (
                            f"Content-Encoding is gzip, but byte {self.received - len(head) + bad} of the body "
                            f"(0x{head[bad]:02x}) follows the gzip data and does not begin another gzip member: "
                            "after a member may come only another member (RFC 1952, 2.2), or NUL padding"
                        )
                        raise Refusal(400, ["header", "content-encoding"], msg, "invalid_encoding")
                    if len(head) < len(GZIP_MAGIC):  # too few bytes yet to tell
                        self.between = head
                        return
                    self.between, data = b"", head
                # zlib checks the member's header (the first member's magic too), and its CRC-32 and length
                self.inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
            try:  # at most one byte past the limit: enough to tell it is exceeded
                decoded = self.inflater.decompress(data, self.max_bytes + 1 - self.size)
            except zlib.error as error:
                msg = f"Content-Encoding is gzip, but the body is not valid gzip data ({error})"
                raise Refusal(400, ["header", "content-encoding"], msg, "invalid_encoding") from None
            self.size += len(decoded)
            if self.size > self.max_bytes:
                msg = f"request body larger than {self.max_bytes} bytes once decoded (AMORTIZED_MAX_BODY_BYTES)"
                raise Refusal(413, ["body"], msg, "http_413")
            self.parts.append(decoded)
            if not self.inflater.eof:  # all of data taken in (the output had room): the member goes on
                return
            data, self.inflater = self.inflater.unused_data, None
            self.members += 1

    def finish(self) -> bytes:
        """The decoded body, once the raw body has ended: every member complete."""
        if self.inflater is not None or self.between or not self.members:
            why = "the body is empty" if not self.received else "the gzip data is truncated"
            raise Refusal(
                400, ["header", "content-encoding"], f"Content-Encoding is gzip, but {why}", "invalid_encoding"
            )
        return b"".join(self.parts)


class ContentEncoding:
    """ASGI middleware: decode ``Content-Encoding: gzip`` bodies (every member).

    415 naming the header for other encodings, 400 for bad gzip (:class:`GzipMembers`).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not carries_body(scope):
            return await self.app(scope, receive, send)
        headers = list(scope.get("headers", []))
        encodings = [value.decode("latin-1").strip().lower() for name, value in headers if name == b"content-encoding"]
        codings = [c.strip() for value in encodings for c in value.split(",") if c.strip() and c.strip() != "identity"]
        codings = ["gzip" if coding == "x-gzip" else coding for coding in codings]  # the same (RFC 9110, 8.4.1.3)
        if not codings:
            return await self.app(scope, receive, send)
        if codings != ["gzip"]:
            given = quoted(", ".join(codings))
            msg = f"Content-Encoding {given} is not supported: send the body as is, or gzip-compressed"
            return await send_error(send, 415, ["header", "content-encoding"], msg, "unsupported_media_type")
        decoder = GzipMembers(self.max_bytes)
        try:  # decoded as it arrives; the raw body is bounded by the BodySizeLimit middleware outside this one
            if not await read_body(receive, decoder.feed):
                return
            decoded = decoder.finish()
        except (HTTPException, Refusal) as error:
            return await refusing(send, error)
        kept = [(n, v) for n, v in headers if n not in (b"content-encoding", b"content-length")]
        scope = {**scope, "headers": [*kept, (b"content-length", str(len(decoded)).encode())]}
        await self.app(scope, replay(receive, decoded), send)


# a quoted-string (RFC 9110, 5.6.4), or a separator outside one: a list's comma, a parameter's semicolon
UNQUOTED = {separator: re.compile(rf'"(?:[^"\\]|\\.)*"|{separator}') for separator in (",", ";")}


def split_unquoted(text: str, separator: str) -> list[str]:
    """``text`` split at every ``separator`` ("," or ";") outside a quoted string, each part stripped.

    A parameter's quoted value may hold either (``x="a,b;c"``, RFC 9110, 5.6.4 and 5.6.6).
    """
    if separator not in text:  # the common case, without scanning
        return [text.strip()]
    parts, start = [], 0
    for found in UNQUOTED[separator].finditer(text):
        if found.group() == separator:
            parts.append(text[start : found.start()].strip())
            start = found.end()
    parts.append(text[start:].strip())
    return parts


def media_types(values: list[str]) -> list[str]:
    """The media types of Content-Type field values: one per value, more where a value joins several by commas.

    A proxy may join repeated fields into one value, separated by commas (RFC 9110, 5.3); a media type holds a
    comma only inside a quoted parameter value (``charset="a,b"``).
    """
    return [kind for value in values for kind in split_unquoted(value, ",") if kind]


UTF8_NAMES = ("utf-8", "utf8")  # the charset a JSON body may declare: its own (RFC 8259, 8.1)


class Utf8Json:
    """ASGI middleware: a JSON body is UTF-8 text, labelled by one Content-Type that does not say otherwise.

    - 400 at ``["body"]`` for a JSON body that is not UTF-8 text, naming the
      first offending byte. JSON exchanged between systems is UTF-8 (RFC 8259,
      8.1), but the decoder behind FastAPI (``json.loads`` of bytes) guesses
      UTF-16 and UTF-32 from a byte order mark or from NULs at the start, so such
      bodies were answered 200, and one with a UTF-16 byte order mark but odd
      bytes got a 400 naming a byte in the middle. A UTF-8 byte order mark is
      left to the decoder, which ignores it (RFC 8259, 8.1 allows that).
    - 415 at ``["header", "content-type"]`` for a JSON Content-Type whose
      ``charset`` is not UTF-8 (``charset=utf-16``; any of them, when given
      twice): the body was read as UTF-8 whatever the label said.
    - 400 at ``["header", "content-type"]`` for a request with more than one
      Content-Type, one of them JSON's, whether as fields of their own or
      joined by commas into one (:func:`media_types`): the first was read and
      the others ignored.

    Only bodies FastAPI reads as JSON are read here (their Content-Type says
    so); the rest pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not carries_body(scope):
            return await self.app(scope, receive, send)
        labels = media_types(Headers(scope=scope).getlist("content-type"))
        if len(labels) > 1 and any(map(reads_as_json, labels)):
            msg = f"Content-Type is given {len(labels)} times ({', '.join(map(quoted, labels))}): send it once"
            return await send_error(send, 400, ["header", "content-type"], msg, "http_400")
        if not labels or not reads_as_json(labels[0]):
            return await self.app(scope, receive, send)
        charset = next((c for c in declared_charsets(labels[0]) if c not in UTF8_NAMES), None)
        if charset is not None:
            named = f"charset={shown(charset)}" if charset else "an empty charset"
            msg = (
                f"{named} is not accepted: a JSON body is UTF-8 text (RFC 8259, 8.1); send it as "
                "UTF-8, labelled application/json or application/json; charset=utf-8"
            )
            return await send_error(send, 415, ["header", "content-type"], msg, "unsupported_media_type")
        parts: list[bytes] = []
        try:
            if not await read_body(receive, parts.append):
                return
        except HTTPException as error:
            return await refusing(send, error)
        body = b"".join(parts)
        problem = not_utf8(body)
        if problem is not None:
            return await send_error(send, 400, ["body"], problem, "http_400")
        await self.app(scope, replay(receive, body), send)


class HeadAsGet:
    """ASGI middleware: HEAD on a GET route answers as GET would, without the body (probes use HEAD).

    FastAPI routes declared with GET do not answer HEAD (405); HTTP requires a
    server that answers GET to answer HEAD with the same headers (RFC 9110, 9.3.2).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# bodies at least this large are compressed (and request bodies decoded, service/routing.py) in a worker thread
# rather than on the event loop (Starlette's gzip default)
OFF_LOOP_BYTES = 128 * 1024
CODINGS = ("zstd", "gzip")  # the codings answers may use, preferred first on equal q


QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")  # RFC 9110, 12.4.2: 0 to 1, at most three decimals


def weighed_items(header: str) -> list[tuple[str, float | None]]:
    """An Accept-style header's items with their q (RFC 9110, 12.4.2): 1 when absent, None when not a qvalue.

    q may come among other parameters (``zstd;level=1;q=0.5``), whose quoted values may hold commas and
    semicolons; names are lower-cased.
    """
    items = []
    for item in split_unquoted(header.lower(), ","):
        name, *parameters = split_unquoted(item, ";")
        q: float | None = 1.0
        for parameter in parameters:
            key, _, value = (part.strip() for part in parameter.partition("="))
            if key == "q":
                q = float(value) if QVALUE.fullmatch(value) else None
        items.append((name, q))
    return items


def field_value(headers: Headers, name: str) -> str:
    """A list-valued field's whole value: its lines joined by commas, as RFC 9110 (5.3) reads repeated fields.

    ``Headers.get`` gives the first line only: ``Accept: text/xml`` then ``Accept: application/json`` was read as
    text/xml alone (a 406), and a second Accept-Encoding line was ignored. Empty when the field is absent.
    """
    return ", ".join(headers.getlist(name))


def accepted_coding(accept_encoding: str) -> str | None:
    """The coding to answer with: the supported one the header weighs highest (q > 0), zstd on a tie; None for none.

    ``*`` stands for every coding not named (RFC 9110, 12.5.3); q may come among other parameters; a q that is not
    a qvalue (``inf``, ``-1``, ``2``, ``abc``) counts as 0.
    """
    # x-gzip is gzip (RFC 9110, 8.4.1.3)
    weights = {("gzip" if name == "x-gzip" else name): q or 0.0 for name, q in weighed_items(accept_encoding) if name}
    best, best_q = None, 0.0
    for coding in CODINGS:
        q = weights.get(coding, weights.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


class ZstdContexts:
    """zstd compression contexts kept for reuse, one per response being compressed.

    Making a context costs about 17 us, and a 40 KB answer compresses in about
    13 us with a kept one against 46 us with a new one (zstd's manual: "When
    compressing many times, it is recommended to allocate a context just
    once, and re-use it"). A context serves one response at a time: streams
    of one compressor that overlap corrupt each other (python-zstandard
    issue #182), and compression runs on worker threads too. So a response
    takes one (a new one if none is free) and gives it back after its last
    chunk; at most ``kept`` wait. ``list.pop`` and ``append`` are atomic, so
    threads share the list safely.
    """

    def __init__(self, level: int, kept: int = 8) -> None:
        self.level, self.kept = level, kept
        self.free: list[zstandard.ZstdCompressor] = []

    def take(self) -> zstandard.ZstdCompressor:
        try:
            return self.free.pop()
        except IndexError:
            return zstandard.ZstdCompressor(level=self.level)

    def give(self, context: zstandard.ZstdCompressor) -> None:
        if len(self.free) < self.kept:
            self.free.append(context)


class ZstdResponder(IdentityResponder):
    """Starlette's responder machinery (threshold, Vary, Content-Length, streaming) with a zstd stream.

    The stream's context comes from ``contexts`` at the first chunk and goes
    back after the last (a response cut short leaves its context to the
    garbage collector).
    """

    content_encoding = "zstd"

    def __init__(self, app: ASGIApp, minimum_size: int, contexts: ZstdContexts) -> None:
        super().__init__(app, minimum_size)
        self.contexts = contexts
        self.context: zstandard.ZstdCompressor | None = None
        self.stream: zstandard.ZstdCompressionObj | None = None

    def _compress_body(self, body: bytes, more_body: bool) -> bytes:
        if self.context is None or self.stream is None:
            self.context = self.contexts.take()
            self.stream = self.context.compressobj()
        flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK if more_body else zstandard.COMPRESSOBJ_FLUSH_FINISH
        out = self.stream.compress(body) + self.stream.flush(flush)
        if not more_body:
            self.contexts.give(self.context)
            self.context = self.stream = None
        return out

    async def apply_compression(self, body: bytes, *, more_body: bool) -> bytes:
        if len(body) >= OFF_LOOP_BYTES:  # compressing a large body inline would hold the event loop
            return await anyio.to_thread.run_sync(self._compress_body, body, more_body)
        return self._compress_body(body, more_body)


class ResponseCompression:
    """ASGI middleware: bodies of at least ``minimum_size`` bytes compressed as ``Accept-Encoding`` allows.

    zstd at ``zstd_level`` or gzip at ``gzip_level``; smaller bodies, clients
    that accept neither, and already encoded or compressed media (PNG) go out
    as they are. bench/answer_formats.py measures bytes, CPU and requests/s.
    """

    def __init__(self, app: ASGIApp, minimum_size: int, gzip_level: int, zstd_level: int) -> None:
        self.app, self.minimum_size = app, minimum_size
        self.gzip_level, self.zstd_contexts = gzip_level, ZstdContexts(zstd_level)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        coding = accepted_coding(field_value(Headers(scope=scope), "accept-encoding"))
        responder: ASGIApp
        if coding == "zstd":
            responder = ZstdResponder(self.app, self.minimum_size, self.zstd_contexts)
        elif coding == "gzip":
            responder = GZipResponder(
                self.app, self.minimum_size, compresslevel=self.gzip_level, thread_minimum_size=OFF_LOOP_BYTES
            )
        else:
            responder = IdentityResponder(self.app, self.minimum_size)
        await responder(scope, receive, send)
