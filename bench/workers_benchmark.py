"""Throughput with 1 and 2 uvicorn workers (WEB_CONCURRENCY) on this machine, side by side.

For each worker count a server is started with ``python -m service`` and
driven by wrk (one thread) at --connections, rounds alternating between the
counts; medians are reported. The load generator runs on the same 2 cores, so
its own CPU time (wrk's, from the kernel's accounting of the child) and the
server's (all its processes, from /proc) are printed as shares of one core.
Requests per server CPU-second is the figure that other work on a shared
machine moves least: it says what a worker does with the CPU it gets.

    .venv/bin/python bench/workers_benchmark.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wrk_load import post  # bench/wrk_load.py, beside this script

from tests.launch import ROOT, start_server, stop_server  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (uvicorn's workers)."""
    pids = [str(pid)] + subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICKS


def wrk(url: str, body: dict, seconds: int, connections: int, server_pid: int) -> dict[str, float]:
    """wrk's figures, and the CPU wrk and the server used meanwhile (% of a core; requests per server CPU-second)."""
    before, server_before = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(server_pid)
    figures = post(url, body, seconds, connections)
    after, server_after = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(server_pid)
    if figures["errors"]:
        raise SystemExit(f"{figures['errors']} non-2xx answers from {url}")
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = server_after - server_before
    return {
        **figures,
        "wrk_cpu": 100 * wrk_cpu / seconds,
        "server_cpu": 100 * server_cpu / seconds,
        "per_cpu": figures["rps"] * seconds / server_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", default="gmm_open")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    body = {"y": 0.3, "objective": "pq", "num_samples": 1000, "seed": 1}
    servers = {}
    try:
        for workers in (1, 2):
            env = {"AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"), "WEB_CONCURRENCY": str(workers)}
            servers[workers] = start_server(env, "--log-level", "warning", "--no-access-log", timeout=120)
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for workers, (_, url) in servers.items():  # a first round each to warm up (not counted)
            wrk(f"{url}/v1/models/{args.model}/posterior", body, 3, args.connections, servers[workers][0].pid)
        for _ in range(args.rounds):
            for workers, (process, url) in servers.items():
                runs[workers].append(
                    wrk(f"{url}/v1/models/{args.model}/posterior", body, args.seconds, args.connections, process.pid)
                )
    finally:
        for process, _ in servers.values():
            stop_server(process)
    print(
        f"{args.model}, one y x 1000 samples with cross-check; wrk -t1 -c{args.connections}, {args.rounds} alternating "
        f"rounds of {args.seconds} s, medians; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        "| workers | req/s (rounds) | p50 ms | p99 ms | server CPU, % of one core | requests per server CPU-second | "
        "wrk CPU, % of one core |"
    )
    print("|---|---|---|---|---|---|---|")
    for workers, rs in runs.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(
            f"| {workers} | {m['rps']:.0f} ({' / '.join(str(round(r['rps'])) for r in rs)}) | {m['p50']:.2f} | "
            f"{m['p99']:.2f} |"
            f" {m['server_cpu']:.0f} | {m['per_cpu']:.0f} | {m['wrk_cpu']:.0f} |"
        )


if __name__ == "__main__":
    main()
