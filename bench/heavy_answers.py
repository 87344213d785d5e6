"""Memory and latency under many concurrent large answers: peak resident memory, memory kept, statuses.

A newcomer sent 12 posterior requests at once, each within every limit (40 y x 100,000 samples, about 115 MB of
JSON): the server reached 3.3 GB and kept 1.4 GB afterwards. Heavy requests (more draws than
AMORTIZED_OFFLOAD_SAMPLES) are now admitted AMORTIZED_HEAVY_CONCURRENCY at a time (service/admission.py); the
others wait up to AMORTIZED_HEAVY_WAIT_SECONDS, then get 503 with Retry-After.

For each setting of AMORTIZED_HEAVY_CONCURRENCY (``--concurrency``, side by side, alternating over ``--rounds``),
a fresh server (``python -m service``, one worker) takes ``--clients`` concurrent requests of ``--y`` observations x
``--samples`` draws. Printed per setting, medians over rounds: the server's peak resident memory (VmHWM, MB), its
resident memory 3 s after the last answer, the wall time of the burst, the median and longest latency, and the
statuses.

    .venv/bin/python bench/heavy_answers.py [--clients 12] [--y 40] [--samples 100000] [--concurrency 64 2]
        [--rounds 3] [--baseline DIR]

``--baseline DIR`` runs another checkout (say the code before admission, ``git worktree add /tmp/ref <commit>``)
with the first ``--concurrency`` setting, beside this one's, in every round. Server processes are started one at a
time: the figures are each server's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.launch import ROOT, start_server, stop_server  # noqa: E402


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def burst(concurrency: int, args: argparse.Namespace, checkout: Path = ROOT) -> dict:
    env = {
        "AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"),
        "WEB_CONCURRENCY": "1",
        "AMORTIZED_HEAVY_CONCURRENCY": str(concurrency),
        "AMORTIZED_HEAVY_WAIT_SECONDS": str(args.wait),
        "PYTHONPATH": str(checkout),
    }
    server, url = start_server(env, "--log-level", "warning", "--no-access-log", cwd=checkout, timeout=120)
    try:
        body = {
            "y": [float(i % 17) - 8.0 for i in range(args.y)],
            "objective": "pq",
            "num_samples": args.samples,
            "cross_check": False,
            "seed": 1,
        }
        idle = status_kb(server.pid, "VmRSS")

        def one(_: int) -> tuple[int, float, int]:
            started = time.perf_counter()
            with httpx.Client(timeout=600) as client:
                response = client.post(f"{url}/v1/models/{args.model}/posterior", json=body)
            return response.status_code, time.perf_counter() - started, len(response.content)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.clients)))
        wall = time.perf_counter() - started
        time.sleep(3)
        return {
            "idle_mb": idle / 1024,
            "peak_mb": status_kb(server.pid, "VmHWM") / 1024,
            "after_mb": status_kb(server.pid, "VmRSS") / 1024,
            "wall_s": wall,
            "median_s": statistics.median(r[1] for r in results),
            "longest_s": max(r[1] for r in results),
            "statuses": Counter(r[0] for r in results),
            "answer_mb": max(r[2] for r in results) / 1e6,
        }
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--y", type=int, default=40)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--model", default="gmm")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 2])
    parser.add_argument("--wait", type=float, default=120.0, help="AMORTIZED_HEAVY_WAIT_SECONDS of every server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout (git worktree add) run first in each round")
    args = parser.parse_args()
    settings: list[tuple[str, int, Path]] = [(str(c), c, ROOT) for c in args.concurrency]
    if args.baseline:
        settings.insert(0, ("baseline", args.concurrency[0], args.baseline.resolve()))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
    for r in range(args.rounds):
        for name, c, checkout in settings:
            run = burst(c, args, checkout)
            runs[name].append(run)
            print(
                f"round {r + 1}, {name}: peak {run['peak_mb']:.0f} MB, after {run['after_mb']:.0f} MB, "
                f"wall {run['wall_s']:.1f} s, statuses {dict(run['statuses'])}",
                flush=True,
            )
    print(
        f"\n{args.clients} clients at once, {args.y} y x {args.samples} samples each ({args.model}, pq, no "
        f"cross-check); medians of {args.rounds} rounds"
    )
    print(
        f"{'concurrency':>11} {'idle MB':>8} {'peak MB':>8} {'after MB':>9} {'wall s':>7} {'median s':>9} "
        f"{'longest s':>10}  answer MB  statuses"
    )
    for name, rows in runs.items():
        med = {
            k: statistics.median(row[k] for row in rows)
            for k in ("idle_mb", "peak_mb", "after_mb", "wall_s", "median_s", "longest_s", "answer_mb")
        }
        statuses = sum((row["statuses"] for row in rows), Counter())
        print(
            f"{name:>11} {med['idle_mb']:>8.0f} {med['peak_mb']:>8.0f} {med['after_mb']:>9.0f} {med['wall_s']:>7.1f} "
            f"{med['median_s']:>9.1f} {med['longest_s']:>10.1f}  {med['answer_mb']:>9.1f}  {dict(statuses)}"
        )


if __name__ == "__main__":
    main()
