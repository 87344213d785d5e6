"""The long schema fuzzing: tests/test_service_fuzz.py with many more examples per operation than the suite runs.

The suite gives every posterior, exact, figure and model operation 600
hypothesis-generated requests (and the job endpoints 150), which keeps the
module to about a minute on 2 cores; this script runs the same test with
``--examples`` per operation (default 2500) and prints pytest's summary and
the wall-clock time. A failure prints the falsifying request, as in the suite.

    .venv/bin/python bench/fuzz.py [--examples 2500] [--seed N]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2500, help="hypothesis examples per operation")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: random, printed on failure)")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pytest", "-q", "tests/test_service_fuzz.py"]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "AMORTIZED_FUZZ_EXAMPLES": str(args.examples)})
    print(f"{args.examples} examples per operation: {time.perf_counter() - started:.0f} s, exit status {done.returncode}")
    sys.exit(done.returncode)
