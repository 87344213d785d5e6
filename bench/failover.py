"""SIGKILL one of two replicas behind HAProxy under load; count what failed and time the way back.

Starts bench/cluster.py's topology (2 replicas of one worker, HAProxy on
loopback), drives it with bench/load.py at 32 connections for --seconds, and
at --kill-at seconds sends SIGKILL to replica 1. Printed: requests on the
killed replica at that moment (HAProxy's count of its current sessions, read
every 20 ms), requests that failed (5xx or connection errors) and when, how
long HAProxy took to mark the replica DOWN, when it was started again, when
HAProxy saw it UP, and that it served again.

    .venv/bin/python bench/failover.py [--seconds 40] [--kill-at 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import Cluster  # noqa: E402
from bench.load import drive, percentile, posterior_mix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--kill-at", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    mix = [m for m in posterior_mix(["gmm_open", "gmm"]) if m[0] != "bad"]  # only answers: any non-200 is a failure
    with Cluster(2) as cluster:
        victim = cluster.replicas[0]
        events: dict[str, float] = {}
        in_flight: list[int] = []

        def killer(start: float) -> None:
            while time.monotonic() < start + args.kill_at:
                in_flight[:] = [int(cluster.stats()[victim.name]["scur"])]
                time.sleep(0.02)
            events["pid"] = cluster.kill(0)
            events["kill"] = time.monotonic()
            events["down"] = events["kill"] + cluster.wait_until(lambda s: s[victim.name] != "UP", 10, poll=0.005)
            served_before = int(cluster.stats()[victim.name]["stot"])
            events["up"] = events["kill"] + cluster.wait_until(lambda s: s[victim.name] == "UP", 120)
            while (
                int(cluster.stats()[victim.name]["stot"]) == served_before and time.monotonic() < start + args.seconds
            ):
                time.sleep(0.01)
            events["served"] = time.monotonic()

        start = time.monotonic()
        thread = threading.Thread(target=killer, args=(start,), daemon=True)
        thread.start()
        run = drive(cluster.url, mix, args.connections, args.seconds, seed=1)
        thread.join(timeout=130)
        load_started = start  # the load began within a few ms of the killer thread
        restarted = victim.starts[-1] if len(victim.starts) > 1 else float("nan")
        stats = cluster.stats()
    failed = [r for r in run.records if r.status != 200]
    kill_at = events["kill"] - load_started
    print(
        f"2 replicas x 1 worker behind HAProxy 2.6 (loopback), {args.connections} connections for {args.seconds:.0f} s,"
        f" SIGKILL of replica 1 (pid {events['pid']}) at {kill_at:.2f} s"
    )
    print(f"machine load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"requests: {len(run.records)} ({len(run.records) / run.wall:.0f}/s), load generator CPU {run.cpu:.1f} s"
        f" = {100 * run.cpu / run.wall:.0f}% of one core"
    )
    print(
        "in flight on replica 1 when killed (HAProxy scur, last reading before the kill): "
        f"{in_flight[0] if in_flight else 'n/a'}"
    )
    print(
        f"failed requests (not 200, or connection errors): {len(failed)}"
        + "".join(f"\n  at {r.started - 0:.2f} s: {r.status or r.error} ({r.kind})" for r in failed[:20])
    )
    print(
        f"HAProxy marked replica 1 DOWN {1e3 * (events['down'] - events['kill']):.0f} ms after the kill (health "
        "checks every 1 s)"
    )
    print(
        f"replica 1 started again {restarted - events['kill']:.2f} s after the kill; UP in HAProxy after"
        f" {events['up'] - events['kill']:.1f} s; first request served again after "
        f"{events.get('served', float('nan')) - events['kill']:.1f} s"
    )
    print(
        f"HAProxy counts: retries {sum(int(r['wretr'] or 0) for r in stats.values())},"
        f" redispatches {sum(int(r['wredis'] or 0) for r in stats.values())};"
        f" per replica served: {', '.join(n + ' ' + r['stot'] for n, r in stats.items())}"
    )
    for label, lo, hi in (
        ("before the kill", 0, kill_at),
        ("kill + 5 s", kill_at, kill_at + 5),
        ("after", kill_at + 5, run.wall),
    ):
        window = run.window(lo, hi)
        print(
            f"  {label:>16}: {len(window)} requests, p50 {percentile(window, 50):.1f} ms, p99 "
            f"{percentile(window, 99):.1f} ms"
        )


if __name__ == "__main__":
    main()
