"""CPU per query of a micro-batch's answer in process: the science and the JSON layout, without HTTP (issue 15).

Under wrk's 8 connections one worker answers micro-batches of about 6 queries
(the ``amortized_batch_queries`` histogram), so what a query costs there is a
batch's fixed cost shared out plus what each query's draws cost. This calls
``service.answers.answer_batch`` on ``--batch`` single-y queries (1000
samples, full diagnostics, cross-checked) and writes each answer's JSON bytes
with orjson, as the endpoint does; the figure is the process's CPU time per
query (``time.process_time``), the median of ``--repeats`` timings. With
``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/ref <commit>``)
each round runs that checkout's code in a fresh process beside this one's,
alternating, on the same artifacts: on a shared machine only the side-by-side
medians compare.

    .venv/bin/python bench/micro_batch_cost.py [--models gmm gmm_open] [--batch 1 7] [--rounds 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(model: str, batch: int, calls: int, repeats: int) -> float:
    """Median CPU microseconds per query of ``calls`` micro-batches of ``batch`` queries, in this process."""
    import time

    import orjson

    from service.answers import PosteriorQuery, answer_batch
    from service.registry import Registry

    served = Registry(ROOT / "artifacts").models[model]
    queries = [PosteriorQuery(served, [0.3], "pq", 1000, seed, False, True, batch=False) for seed in range(batch)]

    def one() -> None:
        for answer in answer_batch(queries):
            orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    for _ in range(max(calls // 2, 20)):  # warm: kernels compiled or loaded, caches filled
        one()
    timings = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            one()
        timings.append((time.process_time() - start) / calls / batch * 1e6)
    return statistics.median(timings)


def run(checkout: Path, model: str, batch: int, calls: int, repeats: int) -> float:
    """:func:`measure` in a fresh process running ``checkout``'s code."""
    command = [sys.executable, __file__, "--measure", model, str(batch), str(calls), str(repeats)]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--measure":  # the child: this checkout's code is on PYTHONPATH
        sys.path.insert(0, os.environ["PYTHONPATH"])
        model, batch, calls, repeats = sys.argv[2], *map(int, sys.argv[3:])
        import logging

        logging.disable(logging.INFO)
        print(f"{measure(model, batch, calls, repeats):.1f}")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gmm", "gmm_open"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 7], help="queries per micro-batch")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per checkout, alternating")
    parser.add_argument("--calls", type=int, default=300, help="micro-batches per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per process (their median is its figure)")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured beside this one")
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    print(f"CPU us per query (answer_batch + orjson), medians of {args.rounds} alternating processes")
    ratio = " | this / baseline |" if args.baseline else " |"
    print("| model | queries per batch | " + " | ".join(checkouts) + ratio)
    print("|---|---|" + "---|" * (len(checkouts) + bool(args.baseline)))
    for model in args.models:
        for batch in args.batch:
            figures: dict[str, list[float]] = {name: [] for name in checkouts}
            for _ in range(args.rounds):
                for name, checkout in checkouts.items():
                    figures[name].append(run(checkout, model, batch, max(args.calls // batch, 20), args.repeats))
            medians = {name: statistics.median(values) for name, values in figures.items()}
            row = f"| {model} | {batch} | " + " | ".join(f"{medians[name]:.0f}" for name in checkouts)
            if args.baseline:
                row += f" | {medians['this'] / medians['baseline']:.2f}"
            print(row + " |")


if __name__ == "__main__":
    main()
