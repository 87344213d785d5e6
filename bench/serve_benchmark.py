"""Serving throughput and latency with wrk: the posterior endpoint beside a bare endpoint of the same stack.

The bare endpoint (enabled by AMORTIZED_BENCH_ENDPOINTS=1) parses the same body
and returns a precomputed answer of the same size through the same response
path, so the ratio isolates the cost of the science on the request path.
Rounds alternate between the endpoints; medians are reported.

    .venv/bin/python bench/serve_benchmark.py [--seconds 5] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wrk_load import post  # bench/wrk_load.py, beside this script

from tests.launch import ROOT, start_server, stop_server


def wrk(url: str, body: dict, seconds: int, connections: int) -> dict[str, float]:
    """requests/s and p50/p99 latency (ms) of POSTing ``body`` to ``url``; stops on any non-2xx answer."""
    figures = post(url, body, seconds, connections)
    if figures["errors"]:
        raise SystemExit(f"{figures['errors']} non-2xx answers from {url}")
    return figures


def stack() -> str:
    """What uvicorn's "auto" picks here: httptools and uvloop when installed (uvicorn[standard])."""
    found = [name for name in ("httptools", "uvloop") if importlib.util.find_spec(name) is not None]
    return ", ".join(found) + " installed" if found else "h11 and asyncio only"


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
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    env = {"AMORTIZED_BENCH_ENDPOINTS": "1", "AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts")}
    server, base = start_server(
        env, "--workers", "1", "--log-level", "warning", "--no-access-log", "--http", args.http, "--loop", args.loop
    )
    try:
        body = {"y": 0.3, "objective": "pq", "num_samples": 1000, "seed": 1}
        rows = []
        for model in args.models:
            size = len(httpx.post(f"{base}/v1/models/{model}/posterior", json=body).content)
            bare_size = len(httpx.post(f"{base}/v1/_bench/bare/{model}", json=body).content)
            runs: dict[str, list[dict[str, float]]] = {"bare": [], "posterior": [], "no cross-check": []}
            for _ in range(args.rounds):
                runs["bare"].append(wrk(f"{base}/v1/_bench/bare/{model}", body, args.seconds, args.connections))
                runs["posterior"].append(
                    wrk(f"{base}/v1/models/{model}/posterior", body, args.seconds, args.connections)
                )
                runs["no cross-check"].append(
                    wrk(
                        f"{base}/v1/models/{model}/posterior",
                        {**body, "cross_check": False},
                        args.seconds,
                        args.connections,
                    )
                )
            medians = {
                name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
                for name, rs in runs.items()
            }
            rows.append((model, size, bare_size, medians))
        ys = [round(-20 + 40 * i / 999, 4) for i in range(1000)]
        batch_times = []
        for _ in range(3):
            started = time.perf_counter()
            response = httpx.post(f"{base}/v1/models/gmm_open/posterior", json={**body, "y": ys}, timeout=120)
            batch_times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:300]
        batch_bytes = len(response.content)
    finally:
        stop_server(server)
    print(
        f"one uvicorn worker (--http {args.http} --loop {args.loop}: {stack()}), wrk -t1 -c{args.connections},"
        f" {args.rounds} alternating rounds of {args.seconds} s, medians;"
        f" body {json.dumps(body)}"
    )
    print("| model | endpoint | bytes | req/s | p50 ms | p99 ms | throughput / bare |")
    print("|---|---|---|---|---|---|---|")
    for model, size, bare_size, medians in rows:
        for name, nbytes in (("bare", bare_size), ("posterior", size), ("no cross-check", size)):
            m = medians[name]
            ratio = m["rps"] / medians["bare"]["rps"]
            print(f"| {model} | {name} | {nbytes} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {ratio:.2f} |")
    print(
        f"one request with 1000 observations x 1000 samples (gmm_open): median {statistics.median(batch_times):.2f} s"
        f" over 3, {batch_bytes / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
