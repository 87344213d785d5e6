"""Heavy requests are admitted a few at a time (service/admission.py): the others wait, then get 503.

A newcomer's 12 concurrent requests of 4.8 million draws each took the server to 3.3 GB; bench/heavy_answers.py
measures the memory. Here: the places are held until the answer's bytes have gone to the client (a slow reader
holds its place) and are freed on every path, light requests never wait, and a client that goes away frees its
place.
"""

import asyncio
import gc
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.responses import Response

from service.admission import CHUNK_BYTES, SERVER_SEND, HeavyAdmission, SentInChunks
from service.errors import ApiError
from service.main import create_app
from service.routers import posterior as posterior_route
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.launch import start_server, stop_server


def test_a_place_is_held_until_its_holder_is_gone_and_a_waiter_past_its_time_gets_503():
    async def scenario():
        admission = HeavyAdmission(places=1, wait_seconds=0.2)
        first = await admission.enter(10)
        with pytest.raises(ApiError) as busy:
            await admission.enter(20)
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        assert "answering 1 large request (" in busy.value.msg and "this one draws 20" in busy.value.msg

        held = admission.held(first, Response(b"x" * 10))  # never sent: freed when it is gone
        waiter = asyncio.create_task(admission.enter(30))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # still held by the response
        del held
        gc.collect()
        second = await asyncio.wait_for(waiter, 1)  # freed when the response went
        admission.leave(second)
        admission.leave(second)  # a second release does nothing
        assert admission.in_use == 0

    asyncio.run(scenario())


def test_the_heap_is_given_back_when_the_last_place_of_a_burst_is_freed():
    idle = []

    async def scenario():
        admission = HeavyAdmission(places=2, wait_seconds=1, on_idle=lambda: idle.append(admission.in_use))
        first, second = await admission.enter(1), await admission.enter(1)
        admission.leave(first)
        assert idle == []  # one still answered
        admission.leave(second)
        admission.leave(second)
        assert idle == [0]  # once, when none is left
        for _ in range(3):  # answers one at a time keep their thread's heap (main.keep_heap): no trim
            admission.leave(await admission.enter(1))
        assert idle == [0]

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES - 7])
def test_an_answer_goes_in_chunks_with_its_headers_and_frees_its_place_after_the_last(size):
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    original = Response(body, media_type="application/json", headers={"Server-Timing": "answer;dur=1"})
    sent, messages = [], []

    async def send(message):
        messages.append((message, list(sent)))

    asyncio.run(SentInChunks(original, lambda: sent.append(True))({}, None, send))
    start, *chunks = [m for m, _ in messages]
    assert start["status"] == 200 and start["headers"] == original.raw_headers
    assert b"".join(c["body"] for c in chunks) == body and len(chunks) == max(1, -(-size // CHUNK_BYTES))
    assert [c["more_body"] for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert all(not before for _, before in messages) and sent == [True]  # freed after the last chunk, once

    async def gone(message):
        if message["type"] == "http.response.body":
            raise OSError("the client went away")

    freed = []
    with pytest.raises(OSError):
        asyncio.run(SentInChunks(original, lambda: freed.append(True))({}, None, gone))
    assert freed == [True]


def test_a_client_that_takes_no_chunk_within_the_send_timeout_is_cut_off_and_frees_its_place(caplog):
    """The timeout is on each chunk's wait: a reader slower in all than the timeout, but taking each chunk within
    it, gets every byte; one that stops taking is cut off there, once, and says so in the log."""
    body = bytes(3 * CHUNK_BYTES)
    original = Response(body, media_type="application/json")

    async def slow(message):  # each chunk taken after 0.1 s: 0.3 s in all, over the 0.2 s timeout
        await asyncio.sleep(0.1)
        received.append(message)

    received, freed = [], []
    asyncio.run(SentInChunks(original, lambda: freed.append(True), timeout=0.2)({}, None, slow))
    assert b"".join(m.get("body", b"") for m in received) == body and freed == [True]

    async def stops(message):  # the start and the first chunk are taken, then nothing more
        if len([m for m in received if m["type"] == "http.response.body"]) == 1:
            await asyncio.Event().wait()
        received.append(message)

    received, freed = [], []
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="service.admission"):
        asyncio.run(SentInChunks(original, lambda: freed.append(True), timeout=0.2)({}, None, stops))
    assert 0.2 <= time.monotonic() - started < 5
    assert [m["type"] for m in received] == ["http.response.start", "http.response.body"] and freed == [True]
    assert f"with {CHUNK_BYTES} of {len(body)} bytes handed over: cut off" in caplog.text


def test_heavy_requests_past_the_places_wait_then_get_503_while_light_ones_are_answered(monkeypatch):
    """In the app: one place; a heavy answer held open (its compute waits on an event), a second heavy request gets
    503 naming the setting, with Retry-After; a light request is answered meanwhile; once the first is done, the
    second is answered, byte for byte as by a server without the limit."""
    gate, entered = threading.Event(), threading.Event()
    real = posterior_route.answer

    def held_answer(query):
        if len(query.y) == 3:  # the held request
            entered.set()
            assert gate.wait(30)
        return real(query)

    monkeypatch.setattr(posterior_route, "answer", held_answer)
    settings = Settings(artifacts_dir=ARTIFACTS, offload_samples=1000, heavy_concurrency=1, heavy_wait_seconds=0.3)
    app = create_app(settings)
    path = "/v1/models/gmm/posterior"
    held = {"y": [0.0, 1.0, 2.0], "num_samples": 2000, "seed": 1, "cross_check": False}
    second = {"y": [5.0], "num_samples": 2000, "seed": 2, "cross_check": False}
    light = {"y": 0.5, "num_samples": 200, "seed": 3, "cross_check": False}  # 200 draws: micro-batched

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            first = asyncio.create_task(client.post(path, json=held))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            waiting = asyncio.create_task(client.post(path, json=second))
            await asyncio.sleep(0.1)
            during = heavy_gauge((await client.get("/metrics")).text)
            refused = await waiting
            answered = await client.post(path, json=light)
            gate.set()
            done = await first
            again = await client.post(path, json=second)
            after = heavy_gauge((await client.get("/metrics")).text)
        return refused, answered, done, again, during, after

    refused, answered, done, again, during, after = asyncio.run(scenario())
    assert during == {"answering": 1.0, "waiting": 1.0} and after == {"answering": 0.0, "waiting": 0.0}
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["body"] and detail["type"] == "busy" and "AMORTIZED_OFFLOAD_SAMPLES" in detail["msg"]
    assert answered.status_code == 200 and done.status_code == 200 and again.status_code == 200
    monkeypatch.setattr(posterior_route, "answer", real)
    unlimited = create_app(Settings(artifacts_dir=ARTIFACTS, offload_samples=1000, heavy_concurrency=50))

    async def alone():
        transport = httpx.ASGITransport(app=unlimited)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=second)

    assert again.content == asyncio.run(alone()).content


def heavy_gauge(text: str) -> dict[str, float]:
    """amortized_heavy_answers by state, from /metrics."""
    found = {}
    for line in text.splitlines():
        if line.startswith("amortized_heavy_answers{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('state="')[1].split('"')[0]] = float(value)
    return found


def test_a_heavy_answer_that_fails_frees_its_place(monkeypatch):
    def failing(query):
        raise MemoryError("as if the answer could not be allocated")

    monkeypatch.setattr(posterior_route, "answer", failing)
    app = create_app(Settings(artifacts_dir=ARTIFACTS, offload_samples=1000, heavy_concurrency=1))
    with pytest.raises(MemoryError):
        asyncio.run(post(app, {"y": [0.0], "num_samples": 2000, "cross_check": False}, raise_app_exceptions=True))
    assert app.state.admission.in_use == 0

    async def metrics():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return (await client.get("/metrics")).text

    assert heavy_gauge(asyncio.run(metrics())) == {"answering": 0.0, "waiting": 0.0}


async def post(app, body, raise_app_exceptions=False):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/v1/models/gmm/posterior", json=body)


SMALL_HEAVY = {"y": [1.0], "num_samples": 2000, "cross_check": False, "seed": 5}  # over the servers' 1000 draws


@contextmanager
def server_with_one_place(wait_seconds: float, send_timeout: float = 60) -> Iterator[str]:
    """A live server (python -m service) whose requests of more than 1000 draws take its one place in turn."""
    env = {
        "AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS),
        "AMORTIZED_OFFLOAD_SAMPLES": "1000",
        "AMORTIZED_HEAVY_CONCURRENCY": "1",
        "AMORTIZED_HEAVY_WAIT_SECONDS": str(wait_seconds),
        "AMORTIZED_SEND_TIMEOUT_SECONDS": str(send_timeout),
    }
    process, url = start_server(env, "--log-level", "warning")
    try:
        yield url
    finally:
        stop_server(process)


def admitted(client: httpx.Client, url: str, seconds: float = 90) -> httpx.Response:
    """SMALL_HEAVY asked until answered (each 503 waited its server's wait); the last response."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.post(f"{url}/v1/models/gmm/posterior", json=SMALL_HEAVY)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response


def test_a_client_that_goes_away_mid_answer_frees_its_place():
    """Live: the client of a heavy request gives up before its answer; the server finishes, the response is dropped
    with the connection, and the place is free again (a leaked place would refuse every heavy request after)."""
    with server_with_one_place(wait_seconds=1) as url, httpx.Client(timeout=30) as client:
        heavy = {"y": [float(i) for i in range(40)], "num_samples": 100_000, "cross_check": False, "seed": 4}
        with pytest.raises(httpx.TimeoutException), httpx.Client(timeout=0.2) as impatient:  # seconds to answer
            impatient.post(f"{url}/v1/models/gmm/posterior", json=heavy)
        again = admitted(client, url)
        assert again.status_code == 200, again.text[:300]


def stalled_reader(url: str) -> socket.socket:
    """A connection that asks for a 24 MB answer and, once it has begun, reads nothing more of it."""
    body = b'{"y": [' + b", ".join(b"%d" % i for i in range(10)) + b'], "num_samples": 100000, "cross_check": false}'
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    request = (
        b"POST /v1/models/gmm/posterior HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    slow.sendall(request)
    assert slow.recv(12).startswith(b"HTTP/1.1 200")  # answered: its bytes are being sent, and not read
    return slow


def test_a_slow_reader_holds_its_place_until_its_answer_has_gone_to_it():
    """Live: a client that reads nothing of its 24 MB answer. The place used to be freed once uvicorn had the
    bytes in its buffer, so every slow reader held an answer in memory beyond the limit. Now the next heavy request
    waits for the place and gets 503; once the reader goes, the place is free."""
    with server_with_one_place(wait_seconds=2) as url, httpx.Client(timeout=30) as client:
        slow = stalled_reader(url)
        waited = client.post(f"{url}/v1/models/gmm/posterior", json=SMALL_HEAVY)
        assert waited.status_code == 503 and waited.json()["detail"][0]["type"] == "busy", waited.text[:300]
        slow.close()
        again = admitted(client, url, seconds=60)
        assert again.status_code == 200, again.text[:300]


def test_a_stalled_reader_is_cut_off_after_the_send_timeout_and_the_next_heavy_request_is_answered():
    """Live: a client that stops reading held its place for as long as its connection stayed open (two such held
    every heavy request off). With AMORTIZED_SEND_TIMEOUT_SECONDS=1 it is cut off after a second without taking a
    chunk, while it is still open at its end, and the next heavy request takes the place. Its connection is dropped
    with what the server held for it: uvicorn's own close waited to send megabytes the client never read, and the
    server's shutdown waited for that connection (117 s in a newcomer's run, until the client closed)."""
    env = {
        "AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS),
        "AMORTIZED_OFFLOAD_SAMPLES": "1000",
        "AMORTIZED_HEAVY_CONCURRENCY": "1",
        "AMORTIZED_HEAVY_WAIT_SECONDS": "20",
        "AMORTIZED_SEND_TIMEOUT_SECONDS": "1",
    }
    process, url = start_server(env, "--log-level", "warning")
    slow = None
    try:
        with httpx.Client(timeout=60) as client:
            slow = stalled_reader(url)
            started = time.monotonic()
            answered = client.post(f"{url}/v1/models/gmm/posterior", json=SMALL_HEAVY)  # waits for the place
            assert answered.status_code == 200, answered.text[:300]
            assert 0.9 <= time.monotonic() - started < 20
            metrics = client.get(f"{url}/metrics").text
            assert "amortized_heavy_cut_off_total 1.0" in metrics  # its response began as a 200: counted apart too
            assert 'amortized_heavy_answers{state="answering"} 0.0' in metrics
        stopping = time.monotonic()
        process.terminate()  # the stalled client still open, unread
        process.wait(timeout=30)
        assert time.monotonic() - stopping < 10, "shutdown waited for the cut-off connection"
    finally:
        if slow is not None:
            slow.close()
        stop_server(process)


def test_a_request_leaves_no_reference_cycle_through_the_servers_send():
    """The server's own send (kept for abort_connection) is a method of uvicorn's request-response cycle, which holds
    the scope: left in the scope, every request became a reference cycle, freed only by the garbage collector, whose
    passes then stalled the server about 30 ms at a time (wrk's p99 20 to 40 ms against 4)."""
    app = create_app(Settings(artifacts_dir=ARTIFACTS))

    class Cycle:  # as uvicorn's RequestResponseCycle: holds the scope, and its send is a bound method
        def __init__(self) -> None:
            self.scope = {
                "type": "http",
                "method": "GET",
                "path": "/health/live",
                "raw_path": b"/health/live",
                "query_string": b"",
                "headers": [],
                "http_version": "1.1",
                "scheme": "http",
                "server": ("testserver", 80),
                "root_path": "",
            }
            self.messages: list = []
            self.transport = None

        async def send(self, message) -> None:
            self.messages.append(message)

        async def receive(self):
            return {"type": "http.request", "body": b"", "more_body": False}

    cycle = Cycle()
    asyncio.run(app(cycle.scope, cycle.receive, cycle.send))
    assert cycle.messages[0]["status"] == 200
    assert SERVER_SEND not in cycle.scope  # held only while the request ran
    gc.disable()  # freed by reference counting alone: no cycle left for the collector
    try:
        left = weakref.ref(cycle)
        del cycle
        assert left() is None
    finally:
        gc.enable()
