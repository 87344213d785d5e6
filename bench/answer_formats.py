"""Answer formats, sizes and compression side by side in one run: issue #15's acceptance figures.

1. 1000 observations x 1000 samples (gmm, pq, cross-checked) end to end through the Python client to numpy arrays
   (``posterior_arrays``): Arrow against JSON, medians of ``--repeats`` alternating runs, with the breakdown:
   server compute (networks, draws, diagnostics), layout and serialisation (in-process, the server's own code),
   transfer (the raw HTTP round trip less those), client decode (bytes to arrays, in-process), and the server's
   CPU (every thread); then, apart and clearly not the acceptance figure, two reduced answers (``include``).
2. A summaries-only request for 10,000 observations (``include: ["summary"]``, q's, ``num_samples: 0``; the exact
   posterior's, and both): its bytes in JSON and Arrow, plain, gzip and zstd, and its time through the client.
3. Compression: bytes, compression CPU per answer (in-process, the server's levels) and requests/s (wrk, one
   worker) with and without, for one answer (1 y, 1000 samples) and for a batch (100 y x 1000 samples).

    .venv/bin/python bench/answer_formats.py [--repeats 7] [--seconds 8] [--rounds 3] [--parts 1,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wrk_load import post  # bench/wrk_load.py, beside this script

from client import ARROW, AmortizedClient, PosteriorArrays
from service import arrow
from service.middleware import ZstdContexts, ZstdResponder
from service.settings import Settings
from tests.launch import ROOT, start_server, stop_server

MODEL = "gmm"
CODINGS = ("identity", "gzip", "zstd")


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def decode_times(json_body: bytes, arrow_body: bytes, repeats: int) -> dict[str, float]:
    """Client decode, bytes to arrays (seconds): the client's own functions."""
    import pyarrow as pa

    json_s, _ = timed(lambda: PosteriorArrays.from_json(orjson.loads(json_body)["results"]), repeats)
    arrow_s, _ = timed(lambda: PosteriorArrays.from_arrow(pa.ipc.open_stream(arrow_body).read_all()), repeats)
    return {"json": json_s, "arrow": arrow_s}


VARIANTS = {  # name: (the client's format, whether it accepts compressed answers)
    "arrow": ("arrow", False),
    "json": ("json", False),
    "arrow+zstd": ("arrow", True),
}


def end_to_end(
    server: subprocess.Popen, base: str, ys: list[float], num_samples: int, repeats: int
) -> tuple[dict, dict[str, bytes]]:
    """Medians (seconds) of the client call to arrays and of the raw HTTP round trip, per variant, runs alternating.

    And the server's CPU during the client's call (mean: /proc counts in clock ticks on some kernels).
    """
    body = {"y": ys, "objective": "pq", "num_samples": num_samples, "seed": 7}
    clients = {
        name: AmortizedClient(base, format=fmt, compress=compress, timeout=300)
        for name, (fmt, compress) in VARIANTS.items()
    }
    raw = httpx.Client(base_url=base, timeout=300, headers={"accept-encoding": "identity"})
    times: dict[str, dict[str, list[float]]] = {
        name: {"client": [], "http": [], "answer": [], "serialise": [], "cpu": []} for name in clients
    }
    bodies = {}
    accept = {"arrow": ARROW, "json": "application/json"}
    for api in clients.values():  # warm: connections open, first-call costs paid
        api.posterior_arrays(MODEL, ys, num_samples=num_samples, seed=7)
    for _ in range(repeats):
        for name, api in clients.items():
            start, cpu = time.perf_counter(), server_cpu(server)
            arrays = api.posterior_arrays(MODEL, ys, num_samples=num_samples, seed=7)
            times[name]["client"].append(time.perf_counter() - start)
            times[name]["cpu"].append(server_cpu(server) - cpu)
            assert isinstance(arrays, PosteriorArrays) and arrays.x is not None
            assert arrays.x.shape == (len(ys), num_samples)
            fmt, compress = VARIANTS[name]
            if compress:
                continue
            start = time.perf_counter()
            response = raw.post(f"/v1/models/{MODEL}/posterior", json=body, headers={"accept": accept[fmt]})
            times[name]["http"].append(time.perf_counter() - start)
            bodies[name] = response.content
            for step, ms in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]):
                times[name][step].append(float(ms) / 1e3)
    for api in clients.values():
        api.close()
    raw.close()
    return {
        name: {k: (statistics.fmean if k == "cpu" else statistics.median)(v) if v else math.nan for k, v in t.items()}
        for name, t in times.items()
    }, bodies


def sizes(base: str, body: dict, repeats: int) -> None:
    """One request's bytes in each format and coding, and its median time through the client."""
    with httpx.Client(base_url=base, timeout=300) as http:
        row, timing = [], []
        for media, label in (("application/json", "JSON"), (ARROW, "Arrow")):
            plain = http.post(
                f"/v1/models/{MODEL}/posterior", json=body, headers={"accept": media, "accept-encoding": "identity"}
            )
            assert plain.status_code == 200, plain.text
            for coding in ("gzip", "zstd"):
                with http.stream(
                    "POST",
                    f"/v1/models/{MODEL}/posterior",
                    json=body,
                    headers={"accept": media, "accept-encoding": coding},
                ) as response:
                    wire = b"".join(response.iter_raw())
                row.append(f"{label}+{coding} {len(wire) / 1e6:.3f} MB")
            row.insert(len(row) - 2, f"{label} {len(plain.content) / 1e6:.3f} MB")
            timing.append(f"{label}: {plain.headers['server-timing']}")
        print("    bytes: " + ", ".join(row))
        print("    the server's time (ms): " + "; ".join(timing))
    for fmt in ("arrow", "json"):
        with AmortizedClient(base, format=fmt, timeout=300) as api:
            api.posterior_arrays(MODEL, body["y"], num_samples=body["num_samples"], include=body["include"])
            seconds, _ = timed(
                lambda api=api: api.posterior_arrays(
                    MODEL, body["y"], num_samples=body["num_samples"], include=body["include"]
                ),
                repeats,
            )
        print(f"    through the client to arrays ({fmt}): median {1e3 * seconds:.0f} ms of {repeats}")


def compression_cpu(body: bytes, settings: Settings, repeats: int) -> str:
    gzip_s, packed_gzip = timed(lambda: gzip.compress(body, settings.gzip_level), repeats)
    contexts = ZstdContexts(settings.zstd_level)  # the server's own compression: a kept context per answer
    zstd_s, packed_zstd = timed(lambda: ZstdResponder(None, 0, contexts)._compress_body(body, False), repeats)
    return (
        f"{len(body) / 1e3:.0f} kB plain; gzip (level {settings.gzip_level}) {len(packed_gzip) / 1e3:.0f} kB in "
        f"{1e3 * gzip_s:.2f} ms CPU; zstd (level {settings.zstd_level}) {len(packed_zstd) / 1e3:.0f} kB in "
        f"{1e3 * zstd_s:.2f} ms CPU"
    )


def server_cpu(process: subprocess.Popen) -> float:
    """Seconds of CPU the server process has used so far, every thread (Linux: /proc/<pid>/task/*/schedstat, in ns)."""
    total = 0
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def in_process(ys: list[float], repeats: int) -> None:
    """The answer's CPU in process, with the worker's heap setting: on one thread, and on two threads as the CPU of
    its critical path (the calling thread's plus the busier pool thread's), what its wall time is on two idle cores.

    Figures that hold on a loaded machine, where wall times measure the other work.
    """
    import threading
    from collections import defaultdict

    from service import answers
    from service.main import keep_heap
    from service.registry import Registry

    keep_heap(Settings().heap_bytes)
    served = Registry(ROOT / "artifacts").models[MODEL]
    per_thread: dict[int, float] = defaultdict(float)
    whole = answers.numbers_for

    def counted(*arguments: Any, **options: Any) -> Any:  # numbers_for, counting the CPU of each block of rows
        if len(arguments) <= 10 and options.get("rows") is None:  # the whole batch: it splits (service.answers)
            return whole(*arguments, **options)
        start = time.thread_time()
        try:
            return whole(*arguments, **options)
        finally:
            per_thread[threading.get_ident()] += time.thread_time() - start

    for threads in (1, 2):
        query = answers.PosteriorQuery(served, ys, "pq", 1000, 7, False, True, media="arrow", compute_threads=threads)
        critical, total = [], []
        for run in range(repeats + 1):
            per_thread.clear()
            answers.numbers_for = counted
            start = time.thread_time()
            try:
                arrow.stream(answers.answer(query), {})
            finally:
                answers.numbers_for = whole
            caller = time.thread_time() - start
            if run:  # the first warms up
                pool = [cpu for thread, cpu in per_thread.items() if thread != threading.get_ident()]
                critical.append(caller + max(pool, default=0.0))  # on one thread the blocks are the caller's
                total.append(caller + sum(pool))
        print(
            f"  in process, {threads} compute thread{'s' if threads > 1 else ''}: answer and serialise, CPU of the "
            f"critical path median {1e3 * statistics.median(critical):.0f} ms, of every thread "
            f"{1e3 * statistics.median(total):.0f} ms"
        )


def part_one(server: subprocess.Popen, base: str, ys: list[float], repeats: int) -> None:
    print(f"== 1. {len(ys)} observations x 1000 samples ({MODEL}, pq, cross-checked) to numpy arrays")
    in_process(ys, repeats)
    e2e, bodies = end_to_end(server, base, ys, 1000, repeats)
    decode = decode_times(bodies["json"], bodies["arrow"], repeats)
    print(
        f"  medians of {repeats} alternating runs; server steps from its Server-Timing header; server CPU: every "
        "thread of the server process during the client's call (mean)"
    )
    print(
        "  format | client to arrays | HTTP round trip | server: answer | server: serialise | transfer and HTTP"
        " | client decode | bytes | server CPU"
    )
    for fmt in ("arrow", "json"):
        t = e2e[fmt]
        rest = t["http"] - t["answer"] - t["serialise"]
        print(
            f"  {fmt:6} | {1e3 * t['client']:7.0f} ms | {1e3 * t['http']:7.0f} ms | {1e3 * t['answer']:6.0f} ms | "
            f"{1e3 * t['serialise']:6.0f} ms | {1e3 * rest:6.0f} ms | {1e3 * decode[fmt]:6.0f} ms | "
            f"{len(bodies[fmt]) / 1e6:.1f} MB | {1e3 * t['cpu']:6.0f} ms"
        )
    print(f"  arrow, the client accepting zstd (compress=True): {1e3 * e2e['arrow+zstd']['client']:.0f} ms to arrays")
    print(f"  JSON / Arrow, client to arrays: {e2e['json']['client'] / e2e['arrow']['client']:.1f}x")

    print("  reduced answers (not the acceptance figure: the default answer above is), Arrow, through the client:")
    with AmortizedClient(base, timeout=300) as api:
        for include in (["samples", "log_weights"], ["q", "samples"]):

            def call(include=include):
                return api.posterior_arrays(MODEL, ys, num_samples=1000, seed=7, include=include)

            call()
            before = server_cpu(server)
            seconds, arrays = timed(call, repeats)
            cpu = (server_cpu(server) - before) / repeats
            assert isinstance(arrays, PosteriorArrays) and arrays.x is not None and arrays.x.shape == (len(ys), 1000)
            print(f"    include {include}: median {1e3 * seconds:.0f} ms to arrays (server CPU {1e3 * cpu:.0f} ms)")


def part_two(base: str, rng: np.random.Generator, repeats: int) -> None:
    print("== 2. summaries only, 10,000 observations (gmm, pq)")
    many = rng.normal(0, 10, 10_000).round(3).tolist()
    for include in (["summary"], ["summary.exact"], ["summary.q", "summary.exact"]):
        print(f"  include {include}, num_samples 0:")
        sizes(base, {"y": many, "num_samples": 0, "include": include, "seed": 1}, repeats)


def part_three(base: str, ys: list[float], args: argparse.Namespace, settings: Settings) -> None:
    print(
        f"== 3. compression ({MODEL}, pq, cross-checked): bytes, CPU, requests/s (wrk, {args.connections} "
        f"connections, {args.seconds} s, one worker)"
    )
    cases: dict[str, tuple[dict[str, Any], int]] = {
        "one answer (1 y x 1000 samples)": ({"y": 0.5, "num_samples": 1000, "seed": 7}, args.connections),
        "a batch (100 y x 1000 samples)": ({"y": ys[:100], "num_samples": 1000, "seed": 7}, 2),
    }
    url = f"{base}/v1/models/{MODEL}/posterior"
    with httpx.Client(timeout=300) as http:
        for label, (body, connections) in cases.items():
            for media, name in (("application/json", "JSON"), (ARROW, "Arrow")):
                plain = http.post(url, json=body, headers={"accept": media, "accept-encoding": "identity"}).content
                print(f"  {label}, {name}: {compression_cpu(plain, settings, args.repeats)}")
                runs: dict[str, list[dict[str, float]]] = {coding: [] for coding in CODINGS}
                for _ in range(args.rounds):  # alternating, so that the machine's swings hit every coding alike
                    for coding in CODINGS:
                        headers = {"Accept": media, "Accept-Encoding": coding}
                        runs[coding].append(post(url, body, args.seconds, connections, headers))
                row = []
                for coding, figures in runs.items():
                    rps = [f["rps"] for f in figures]
                    errors = sum(f["errors"] for f in figures)
                    row.append(
                        f"{coding} {statistics.median(rps):.1f} req/s (runs {' / '.join(f'{r:.0f}' for r in rps)};"
                        f" p50 {statistics.median(f['p50'] for f in figures):.1f} ms"
                        + (f", {errors} errors)" if errors else ")")
                    )
                print(f"    {connections} connections, medians of {args.rounds}: " + ", ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings = Settings()  # the server's compression levels, for the CPU figures
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds per coding")
    parser.add_argument("--parts", default="1,2,3", help="the parts to run, comma-separated (e.g. 1)")
    args = parser.parse_args()
    parts = {int(part) for part in args.parts.split(",")}
    rng = np.random.default_rng(15)
    ys = rng.normal(0, 10, 1000).round(3).tolist()
    server, base = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts")}, timeout=120)
    try:
        if 1 in parts:
            part_one(server, base, ys, args.repeats)
        if 2 in parts:
            part_two(base, rng, args.repeats)
        if 3 in parts:
            part_three(base, ys, args, settings)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
