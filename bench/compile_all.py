"""Compile all eight artifacts from scratch into a temporary folder and time it (the trainer's default 2 jobs).

    .venv/bin/python bench/compile_all.py [--jobs 2]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trainer", "compile", "--all", "--jobs", str(args.jobs), "--out", out],
                       cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        subprocess.run([sys.executable, "-m", "trainer", "report", "--dir", out], cwd=ROOT, check=True)
    print(f"\ncompiling all eight artifacts from scratch (with evaluation and figures, {args.jobs} jobs): {wall:.1f} s wall-clock")
