"""Soak: --minutes (default 10) at 32 connections with a mix of scalar, batch, "both", resample and bad requests.

Starts the server as ``make serve`` does (python -m service, WEB_CONCURRENCY
from --workers, default 1) and drives it with bench/load.py: 40% scalar (1000
samples, pq or qp), 15% batches of 8 y (200 samples), 15% "both" (500
samples), 15% resample, 15% bad requests (num_samples 0, y "NaN", malformed
JSON: 422; an unknown model: 404), y and seeds varied. Resident memory of the
server (all its processes) is read every second.

Printed per minute: requests, p50 and p99 of the answered ones, responses by
class, connection errors, resident memory. Then the acceptance: no 5xx, no
connection errors, memory growth after the first minute (warm-up) under 5%,
p99 of the first and the last minute side by side.

    .venv/bin/python bench/soak.py [--minutes 10] [--connections 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import drive, percentile, posterior_mix  # noqa: E402
from tests.launch import ROOT, start_server, stop_server  # noqa: E402


def resident_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its children (uvicorn's workers), in bytes."""
    pids = [str(pid)] + subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["gaussian", "gmm", "gmm_discrete", "gmm_open"])
    args = parser.parse_args()
    env = {"AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"), "WEB_CONCURRENCY": str(args.workers)}
    load_before = os.getloadavg()
    server, url = start_server(env, "--log-level", "warning", "--no-access-log", timeout=120)
    memory: list[tuple[float, int]] = []
    try:
        memory.append((0.0, resident_bytes(server.pid)))
        run = drive(
            url,
            posterior_mix(args.models),
            args.connections,
            args.minutes * 60,
            seed=2,
            on_tick=lambda t, _: memory.append((t, resident_bytes(server.pid))),
        )
        memory.append((run.wall, resident_bytes(server.pid)))
    finally:
        stop_server(server)

    def rss_at(t: float) -> int:
        return min(memory, key=lambda m: abs(m[0] - t))[1]

    minutes = int(round(args.minutes))
    print(
        f"soak: python -m service, {args.workers} worker(s), {args.connections} connections, {run.wall / 60:.1f} min,"
        f" {len(run.records)} requests ({len(run.records) / run.wall:.0f}/s)"
    )
    print(
        f"machine load average (1 min) before / after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    print(
        f"load generator (bench/load.py, asyncio + uvloop): {run.cpu:.0f} s CPU = {100 * run.cpu / run.wall:.0f}% "
        "of one core"
    )
    print("| minute | requests | p50 ms | p99 ms | 2xx | 4xx | 5xx | connection errors | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in range(minutes):
        window = run.window(60 * m, 60 * (m + 1))
        answered = [r for r in window if r.status == 200]
        classes = Counter(f"{r.status // 100}xx" if r.status else "conn" for r in window)
        print(
            f"| {m + 1} | {len(window)} | {percentile(answered, 50):.1f} | {percentile(answered, 99):.1f} | "
            f"{classes['2xx']} |"
            f" {classes['4xx']} | {classes['5xx']} | {classes['conn']} | {rss_at(60 * (m + 1)) / 2**20:.0f} |"
        )
    kinds = Counter((r.kind, r.status) for r in run.records)
    print(
        "by kind and status: "
        + ", ".join(f"{kind} {status or 'conn'}: {n}" for (kind, status), n in sorted(kinds.items()))
    )
    errors = sum(1 for r in run.records if r.status >= 500)
    broken = [r for r in run.records if r.status == 0]
    bad_ok = sum(1 for r in run.records if r.kind == "bad" and r.status < 400)
    base, end = rss_at(60), memory[-1][1]
    growth = (end - base) / base
    first, last = run.window(0, 60), run.window(run.wall - 60, run.wall)
    print(
        f"5xx responses: {errors}; connection errors: {len(broken)}"
        + (f" ({Counter(r.error for r in broken)})" if broken else "")
        + f"; bad requests answered 2xx: {bad_ok}"
    )
    print(
        f"resident memory: {memory[0][1] / 2**20:.0f} MB at start, {base / 2**20:.0f} MB after the first minute,"
        f" {end / 2**20:.0f} MB at the end: growth after warm-up {100 * growth:+.2f}%"
    )
    print(
        f"p99 first minute {percentile([r for r in first if r.status == 200], 99):.1f} ms,"
        f" last minute {percentile([r for r in last if r.status == 200], 99):.1f} ms"
        f" (p50 {percentile([r for r in first if r.status == 200], 50):.1f} / "
        f"{percentile([r for r in last if r.status == 200], 50):.1f} ms)"
    )
    passed = errors == 0 and not broken and bad_ok == 0 and growth < 0.05
    print("PASS" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
