"""Serving throughput and latency with wrk: the posterior endpoint beside a bare endpoint of the same stack.

The bare endpoint (enabled by AMORTIZED_BENCH_ENDPOINTS=1) parses the same body
and returns a precomputed answer of the same size through the same response
path, so the ratio isolates the cost of the science on the request path.
Rounds alternate between the endpoints; medians are reported.

With ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/main-ref main``)
a second server runs that checkout's code (``PYTHONPATH``) on the same
artifacts, and every round runs both servers one after the other, so the two
are compared under the same load on a shared machine.

    .venv/bin/python bench/serve_benchmark.py [--seconds 5] [--rounds 3] [--connections 8] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wrk_load import post  # bench/wrk_load.py, beside this script

from tests.launch import ROOT, start_server, stop_server


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: dict, seconds: int, connections: int, pid: int | None = None) -> dict[str, float]:
    """requests/s and p50/p99 latency (ms) of POSTing ``body`` to ``url``; stops on any non-2xx answer.

    With the server's ``pid`` (one worker: uvicorn serves in that process), also ``cpu_ms``: the
    server's CPU time per request, which other processes on a shared machine disturb far less than
    requests/s.
    """
    before = cpu_seconds(pid) if pid is not None else 0.0
    figures = post(url, body, seconds, connections)
    if figures["errors"]:
        raise SystemExit(f"{figures['errors']} non-2xx answers from {url}")
    if pid is not None:
        figures["cpu_ms"] = 1e3 * (cpu_seconds(pid) - before) / (figures["rps"] * seconds)
    return figures


def stack() -> str:
    """What uvicorn's "auto" picks here: httptools and uvloop when installed (uvicorn[standard])."""
    found = [name for name in ("httptools", "uvloop") if importlib.util.find_spec(name) is not None]
    return ", ".join(found) + " installed" if found else "h11 and asyncio only"


def batch_time(base: str, body: dict) -> tuple[float, int]:
    """One request with 1000 observations x 1000 samples (gmm_open): median seconds over 3, and its bytes."""
    ys = [round(-20 + 40 * i / 999, 4) for i in range(1000)]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = httpx.post(f"{base}/v1/models/gmm_open/posterior", json={**body, "y": ys}, timeout=120)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
    return statistics.median(times), len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["gmm_open", "gmm"])
    parser.add_argument(
        "--http", default="auto", help="uvicorn's HTTP implementation: auto (httptools when installed), h11"
    )
    parser.add_argument("--loop", default="auto", help="uvicorn's event loop: auto (uvloop when installed), asyncio")
    parser.add_argument("--baseline", type=Path, help="another checkout whose server runs beside this one's")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    options = ("--workers", "1", "--log-level", "warning", "--no-access-log", "--http", args.http, "--loop", args.loop)
    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    servers: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="serve-benchmark-") as folder:
        try:
            for name, root in checkouts.items():
                env = {
                    "AMORTIZED_BENCH_ENDPOINTS": "1",
                    "AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"),
                    "PROMETHEUS_MULTIPROC_DIR": str(Path(folder) / name),  # each server its own metrics folder
                    "PYTHONPATH": str(root),
                }
                servers[name] = start_server(env, *options, cwd=root, timeout=180)  # a loaded machine starts slowly
            body = {"y": 0.3, "objective": "pq", "num_samples": 1000, "seed": 1}
            rows = []
            for model in args.models:
                sizes = {
                    name: len(httpx.post(f"{base}/v1/models/{model}/posterior", json=body).content)
                    for name, (_, base) in servers.items()
                }
                bare_size = len(httpx.post(f"{servers['this'][1]}/v1/_bench/bare/{model}", json=body).content)
                endpoints = {
                    "bare": ("/v1/_bench/bare/{model}", body),
                    "posterior": ("/v1/models/{model}/posterior", body),
                    "no cross-check": ("/v1/models/{model}/posterior", {**body, "cross_check": False}),
                }
                runs: dict[tuple[str, str], list[dict[str, float]]] = {}
                for _ in range(args.rounds):
                    for name, (process, base) in servers.items():
                        for endpoint, (path, payload) in endpoints.items():
                            url = base + path.format(model=model)
                            figures = wrk(url, payload, args.seconds, args.connections, process.pid)
                            runs.setdefault((name, endpoint), []).append(figures)
                for (name, endpoint), rs in runs.items():
                    medians = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_ms")}
                    bare = runs[(name, "bare")]
                    ratios = [r["rps"] / b["rps"] for r, b in zip(rs, bare)]
                    cpu_ratios = [b["cpu_ms"] / r["cpu_ms"] for r, b in zip(rs, bare)]
                    nbytes = bare_size if endpoint == "bare" else sizes[name]
                    ratio = (statistics.median(ratios), statistics.median(cpu_ratios))
                    rows.append((model, name, endpoint, nbytes, medians, ratio))
            batches = {name: [batch_time(base, body)] for name, (_, base) in servers.items()}
            for _ in range(2):  # alternating, three requests each time
                for name, (_, base) in servers.items():
                    batches[name].append(batch_time(base, body))
        finally:
            for process, _ in servers.values():
                stop_server(process)
    print(
        f"one uvicorn worker (--http {args.http} --loop {args.loop}: {stack()}), wrk -t1 -c{args.connections},"
        f" {args.rounds} alternating rounds of {args.seconds} s, medians;"
        f" body {json.dumps(body)}"
        + (f"; this checkout ({ROOT}) beside the baseline ({args.baseline})" if args.baseline else "")
    )
    print(
        "| model | code | endpoint | bytes | req/s | p50 ms | p99 ms | server CPU ms / request | throughput / bare |"
        " bare's CPU / this CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, name, endpoint, nbytes, m, (ratio, cpu_ratio) in rows:
        print(
            f"| {model} | {name} | {endpoint} | {nbytes} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} |"
            f" {m['cpu_ms']:.3f} | {ratio:.2f} | {cpu_ratio:.2f} |"
        )
    print("(ratios: medians over the rounds of each round's ratio to the bare endpoint of the same server)")
    for name, timed in batches.items():
        seconds = [t for t, _ in timed]
        print(
            f"one request with 1000 observations x 1000 samples (gmm_open), {name}: median"
            f" {statistics.median(seconds):.3f} s over {len(seconds)} runs of 3 (each run's median:"
            f" {', '.join(f'{t:.3f}' for t in seconds)}), {timed[0][1] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
