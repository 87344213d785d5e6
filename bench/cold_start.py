"""Cold start: latency of the first seconds of load on a freshly started server, against the same load warmed up.

For each code version (this tree, and --before REV checked out into a temporary
git worktree), a new server (one worker) is started and driven at once with
wrk at 32 connections: gmm_open then gmm, one y and 1000 samples per request,
--seconds each ("cold"), then the same two rounds again ("warm"). Printed side
by side: p50, p99 and max of each round, and the server's start-up time (until
/health/ready says 200, warm-up included).

The cause, measured in-process (a machine shared with other work moves the HTTP
figures a lot; these move little): after each version's warm-up, the time of
the first and the second micro-batch of 8 queries x 1000 samples per model, and
how many numba kernels compiled a new signature for the first.

    .venv/bin/python bench/cold_start.py [--before a6e3c7b] [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wrk_load import post  # bench/wrk_load.py, beside this script

from tests.launch import ROOT, free_port, stop_server, wait_ready  # noqa: E402

BODY = {"y": 0.3, "objective": "pq", "num_samples": 1000, "seed": 1}


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    return post(url, BODY, seconds, connections)


def measure(source: Path, seconds: int, connections: int) -> tuple[float, dict[str, dict[str, float]]]:
    """Start the server of the code in ``source``; returns (seconds to ready, {round: figures})."""
    port = free_port()
    env = {**os.environ, "AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"), "PYTHONPATH": str(source)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "service.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    started = time.monotonic()
    server = subprocess.Popen(command, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, timeout=120)
        ready = time.monotonic() - started
        rounds = {}
        for phase in ("cold", "warm"):
            for model in ("gmm_open", "gmm"):
                rounds[f"{phase} {model}"] = wrk(f"{url}/v1/models/{model}/posterior", seconds, connections)
    finally:
        stop_server(server)
    return ready, rounds


PROBE = """
import sys, time
from pathlib import Path
from numba.core.registry import CPUDispatcher
try:  # the current layout; the code before the fix had the kernels and the query elsewhere
    import amortized.importance.kernels as kernels
    from service.answers import PosteriorQuery as Query
except ImportError:
    import amortized.kernels as kernels
    from service.batching import Query
from service.answers import answer_batch
from service.main import warm_up
from service.registry import Registry

def signatures():
    return sum(len(f.signatures) for f in vars(kernels).values() if isinstance(f, CPUDispatcher))

registry = Registry(Path(sys.argv[1]))
started = time.perf_counter()
warm_up(registry)
print(f"warm-up {time.perf_counter() - started:.2f}")
for model in ("gmm_open", "gmm"):
    for objective, cross_check in (("pq", True), ("pq", False), ("both", True)):
        queries = [Query(registry.models[model], [0.3], objective, 1000, seed, False, cross_check) for seed in range(8)]
        times, before = [], signatures()
        for _ in range(2):
            started = time.perf_counter()
            answer_batch(queries)
            times.append(time.perf_counter() - started)
        print(f"{model} {objective} {cross_check} {times[0] * 1e3:.1f} {times[1] * 1e3:.1f} {signatures() - before}")
"""


def probe(source: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "artifacts")],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--before", default="a6e3c7b", help="git revision of the 'before' code (default: before the fix)"
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="fresh starts per version")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    before = Path(tempfile.mkdtemp(prefix="amortized-before-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True, capture_output=True
    )
    results, probes = [], {}
    try:
        for name, source in ((f"before ({args.before})", before), ("after (this tree)", ROOT)):
            probes[name] = probe(source)
        for attempt in range(args.repeat):
            for name, source in ((f"before ({args.before})", before), ("after (this tree)", ROOT)):
                ready, rounds = measure(source, args.seconds, args.connections)
                results.append((name, attempt + 1, ready, rounds))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
        shutil.rmtree(before.parent, ignore_errors=True)
    print(
        "in-process, after the warm-up: the first and the second micro-batch of 8 queries x 1000 samples (ms),"
        " and kernel signatures compiled by the first"
    )
    print("| code | warm-up s | model | objective | cross-check | first ms | second ms | compiled |")
    print("|---|---|---|---|---|---|---|---|")
    for name, lines in probes.items():
        warm = lines[0].split()[1]
        for line in lines[1:]:
            model, objective, check, first, second, compiled = line.split()
            print(f"| {name} | {warm} | {model} | {objective} | {check} | {first} | {second} | {compiled} |")
    print()
    print(
        f"fresh server (one uvicorn worker), wrk -t1 -c{args.connections}, {args.seconds} s per round, POST one y x "
        "1000 samples;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| code | start | ready after s | round | req/s | p50 ms | p99 ms | max ms | non-2xx |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, attempt, ready, rounds in results:
        for label, r in rounds.items():
            print(
                f"| {name} | {attempt} | {ready:.1f} | {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['max']:.1f} | {r['errors']} |"
            )


if __name__ == "__main__":
    main()
