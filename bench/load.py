"""A closed-loop HTTP/1.1 load generator on asyncio streams, for the soak and failover benchmarks.

Each of C connections sends one request, reads the whole response, and sends
the next (keep-alive; a closed or broken connection is opened again). Every
request is recorded: when it started, how long it took, and its status code or
the connection error that ended it. Requests come from a fixed list of
(name, method, path, body) chosen at random with weights, so making them costs
nothing during the run. The generator's own CPU time is reported (it shares the
machine's 2 cores with the server), so its cost can be stated beside the figures.

A minimal client on purpose: httpx spends ~0.3 ms of CPU per request, which at
these rates would take a core from the server.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Record:
    started: float  # seconds since the run began
    seconds: float
    kind: str
    status: int  # 0: a connection error (reset, closed without an answer, timeout)
    error: str = ""


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0  # the generator's own user + system CPU seconds

    def window(self, start: float, stop: float) -> list[Record]:
        return [r for r in self.records if start <= r.started < stop]


def percentile(records: list[Record], q: float) -> float:
    ok = [r.seconds for r in records if r.status]
    return float(np.percentile(ok, q) * 1e3) if ok else float("nan")


class Connection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        self.writer.write(raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await asyncio.wait_for(self.reader.readline(), self.timeout)).split(b";")[0], 16)
                await asyncio.wait_for(self.reader.readexactly(size + 2), self.timeout)
                if size == 0:
                    break
        else:
            await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", 0))), self.timeout)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def raw_request(host: str, port: int, method: str, path: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def _drive(
    host: str,
    port: int,
    mix: list[tuple[str, bytes, float]],
    connections: int,
    seconds: float,
    timeout: float,
    seed: int,
    on_tick=None,
) -> Run:
    run = Run()
    rng = random.Random(seed)
    names, raws, weights = zip(*mix)
    start = time.perf_counter()
    deadline = start + seconds

    async def client(index: int) -> None:
        connection = Connection(host, port, timeout)
        local = random.Random(rng.random())
        while (now := time.perf_counter()) < deadline:
            i = local.choices(range(len(raws)), weights)[0]
            try:
                status, error = await connection.request(raws[i]), ""
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                status, error = 0, type(exc).__name__
                connection.close()
            run.records.append(Record(now - start, time.perf_counter() - now, names[i], status, error))
        connection.close()

    async def ticker() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            on_tick(time.perf_counter() - start, run)

    before = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [client(i) for i in range(connections)] + ([ticker()] if on_tick else [])
    await asyncio.gather(*tasks)
    after = resource.getrusage(resource.RUSAGE_SELF)
    run.wall = time.perf_counter() - start
    run.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run.records.sort(key=lambda r: r.started)
    return run


def drive(
    url: str,
    mix: list[tuple[str, str, str, bytes | None, float]],
    connections: int,
    seconds: float,
    timeout: float = 30.0,
    seed: int = 0,
    on_tick=None,
) -> Run:
    """Load ``url`` (http://host:port) with ``mix`` = [(name, method, path, body, weight)] for ``seconds``."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    prepared = [
        (name, raw_request(host, int(port), method, path, body), weight) for name, method, path, body, weight in mix
    ]
    try:
        import uvloop  # the server's loop too (uvicorn[standard]): less CPU per request here

        return uvloop.run(_drive(host, int(port), prepared, connections, seconds, timeout, seed, on_tick))
    except ImportError:
        return asyncio.run(_drive(host, int(port), prepared, connections, seconds, timeout, seed, on_tick))


def posterior_mix(
    models: list[str], seed: int = 0, variants: int = 200
) -> list[tuple[str, str, str, bytes | None, float]]:
    """The soak's mix: scalar, batch, "both", resample, and bad requests (422, 404, malformed JSON).

    With varied y and seeds.
    """
    import json

    rng = random.Random(seed)
    mix = []

    def add(name: str, path: str, body: bytes, weight: float) -> None:
        mix.append((name, "POST", path, body, weight / variants))

    for _ in range(variants):
        model = rng.choice(models)
        path = f"/v1/models/{model}/posterior"
        y = round(rng.uniform(-15, 15), 3)
        seed_ = rng.randrange(2**31)
        add(
            "scalar",
            path,
            json.dumps({"y": y, "objective": rng.choice(["pq", "qp"]), "num_samples": 1000, "seed": seed_}).encode(),
            40,
        )
        add(
            "batch",
            path,
            json.dumps(
                {"y": [round(rng.uniform(-15, 15), 3) for _ in range(8)], "num_samples": 200, "seed": seed_}
            ).encode(),
            15,
        )
        add("both", path, json.dumps({"y": y, "objective": "both", "num_samples": 500, "seed": seed_}).encode(), 15)
        add(
            "resample",
            path,
            json.dumps({"y": y, "objective": "pq", "num_samples": 1000, "resample": True}).encode(),
            15,
        )
        bad = rng.choice(
            [
                (path, json.dumps({"y": y, "num_samples": 0}).encode()),  # 422
                (path, json.dumps({"y": "NaN"}).encode()),  # 422
                (path, b'{"y": [1.0, '),  # malformed JSON: 422
                (f"/v1/models/no-such-model-{rng.randrange(10**6)}/posterior", json.dumps({"y": y}).encode()),  # 404
            ]
        )
        add("bad", bad[0], bad[1], 15)
    return mix
