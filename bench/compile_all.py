"""Compile all eight artifacts from scratch into a temporary folder and time it (the trainer's default 2 jobs).

Prints each pair's time (training, evaluation, calibration; its worker's CPU
time), the evaluation and calibration tables, and the whole compile's
wall-clock and CPU time (user + system of the compiler and its workers). On a
machine shared with other work the wall-clock time is the figure that moves;
the CPU time moves less.

    .venv/bin/python bench/compile_all.py [--jobs 2] [--keep DIR]
"""

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="copy the compiled artifacts here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "trainer", "compile", "--all", "--jobs", str(args.jobs), "--out", out],
            cwd=ROOT,
            check=True,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(done.stdout.strip(), end="\n\n")
        subprocess.run([sys.executable, "-m", "trainer", "report", "--dir", out], cwd=ROOT, check=True)
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    print(
        f"\ncompiling all eight artifacts from scratch (with evaluation, calibration and figures, {args.jobs} jobs): "
        f"{wall:.1f} s wall-clock, {cpu:.1f} s CPU"
    )
