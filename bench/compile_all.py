"""Compile all eight artifacts from scratch into a temporary folder and time it (the trainer's default 2 jobs).

Prints each pair's time (training, evaluation, calibration; its worker's CPU
time), the evaluation and calibration tables, and the whole compile's
wall-clock and CPU time (user + system of the compiler and its workers). On a
machine shared with other work the wall-clock time is the figure that moves;
the CPU time moves less. ``--repeats N`` compiles N times back to back and
prints each run and the medians (the tables are the first run's).

    .venv/bin/python bench/compile_all.py [--jobs 2] [--keep DIR] [--repeats 3]
"""

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_once(jobs: int, keep: Path | None, report: bool) -> tuple[float, float]:
    """One compile of all eight into a fresh folder: (wall-clock s, CPU s of the compiler and its workers)."""
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "trainer", "compile", "--all", "--jobs", str(jobs), "--out", out],
            cwd=ROOT,
            check=True,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if report:
            print(done.stdout.strip(), end="\n\n")
            subprocess.run([sys.executable, "-m", "trainer", "report", "--dir", out], cwd=ROOT, check=True)
        if keep:
            shutil.copytree(out, keep, dirs_exist_ok=True)
    return wall, cpu


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="copy the compiled artifacts here (the last run's)")
    parser.add_argument("--repeats", type=int, default=1, help="compile this many times back to back; medians")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        runs.append(compile_once(args.jobs, args.keep if i == args.repeats - 1 else None, report=i == 0))
        print(f"run {i + 1}: {runs[-1][0]:.1f} s wall-clock, {runs[-1][1]:.1f} s CPU", flush=True)
    walls, cpus = zip(*runs)
    print(
        f"\ncompiling all eight artifacts from scratch (with evaluation, calibration and figures, {args.jobs} jobs): "
        f"{statistics.median(walls):.1f} s wall-clock, {statistics.median(cpus):.1f} s CPU"
        + (f" (medians of {len(runs)}; wall-clock {', '.join(f'{w:.1f}' for w in walls)} s)" if len(runs) > 1 else "")
    )
