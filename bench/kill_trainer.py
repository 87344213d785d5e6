"""SIGKILL the trainer at random moments of compiling and writing; the served artifacts must survive every time.

Works on a temporary copy of artifacts/. Each round runs
``python -m trainer compile --model gaussian --objective pq qp --steps 300 --seed <round>``
into the copy (figures included) and kills it with SIGKILL:

- "time" rounds: at a moment drawn uniformly over a whole run's duration
  (start-up, training, evaluation, writing, figures);
- "write" rounds: while it writes: this script polls ``<copy>/.staging`` and
  kills 0 to 2 ms after the k-th staged file appears (k drawn from 1 to 4:
  the first weights, the first manifest, the second weights, the second manifest).

After each kill: every artifact of the copy loads and verifies (sha256, rebuild),
as the server's registry loads them, with none refused; each killed artifact is
either the previous one or a complete new one (counted); no staging file is in
a model folder (where the server looks). Files a killed writer left in
``.staging`` are counted, and the next save removes them.

    .venv/bin/python bench/kill_trainer.py [--rounds 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amortized.artifacts import STAGING, discover_artifacts  # noqa: E402
from service.registry import Registry  # noqa: E402
from tests.launch import ROOT  # noqa: E402

OBJECTIVES = ("pq", "qp")


def command(out: Path, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "compile",
        "--model",
        "gaussian",
        "--objective",
        *OBJECTIVES,
        "--steps",
        "300",
        "--seed",
        str(seed),
        "--jobs",
        "1",
        "--out",
        str(out),
    ]


EXPECTED = {"artifacts": 0, "served": 0}  # what the copy holds at the start; every check must find all of it again


def committed(root: Path) -> dict[str, str]:
    """sha256 of the weights each gaussian manifest names, after checking that everything under ``root`` verifies."""
    loaded, refused = discover_artifacts(root)
    registry = Registry(root)  # what the server would serve
    EXPECTED["artifacts"] = EXPECTED["artifacts"] or len(loaded)
    EXPECTED["served"] = EXPECTED["served"] or len(registry.models)
    if refused or len(loaded) != EXPECTED["artifacts"]:
        raise AssertionError(f"{len(loaded)} artifacts load, refused: {refused}")
    if registry.refused or len(registry.models) != EXPECTED["served"]:
        raise AssertionError(f"the registry refused {registry.refused}")
    return {objective: loaded[("gaussian", objective)].manifest.weights.sha256 for objective in OBJECTIVES}


def kill_while_writing(process: subprocess.Popen, staging: Path, nth: int, rng: random.Random) -> tuple[float, str]:
    """SIGKILL ``process`` 0-2 ms after the ``nth`` staged file appears; returns (when, what was being written)."""
    try:
        seen: set[str] = set(os.listdir(staging))  # files a killed writer left before: not this run's
    except FileNotFoundError:
        seen = set()
    count = 0
    started = time.monotonic()
    while process.poll() is None:
        try:
            names = os.listdir(staging)
        except FileNotFoundError:
            names = []
        for name in names:
            if name not in seen:
                seen.add(name)
                count += 1
                if count == nth:
                    time.sleep(rng.uniform(0, 0.002))
                    process.send_signal(signal.SIGKILL)
                    return time.monotonic() - started, name.split("-", 2)[2].rsplit(".", 1)[0]
    return time.monotonic() - started, "finished first"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="amortized-kill-"))
    out = root / "artifacts"
    shutil.copytree(ROOT / "artifacts", out, ignore=shutil.ignore_patterns(".staging*"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        previous = committed(out)
        started = time.monotonic()
        subprocess.run(command(out, 1000), env=env, cwd=ROOT, check=True, capture_output=True)  # one whole run, timed
        duration = time.monotonic() - started
        previous = committed(out)
        print(
            f"a whole run (start-up, 2 x 300 steps, evaluation, 2 artifacts, figures) takes {duration:.1f} s;"
            f" {args.rounds} rounds, SIGKILL each"
        )
        print(
            "| round | trigger | killed after s | writing | pq | qp | staging files left in .staging | in "
            "model folders |"
        )
        print("|---|---|---|---|---|---|---|---|")
        outcomes: Counter = Counter()
        for i in range(args.rounds):
            process = subprocess.Popen(
                command(out, i), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if i % 2:
                delay = rng.uniform(0, duration)
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                trigger, when, writing = "time", delay, "-"
            else:
                nth = rng.randint(1, 4)
                when, writing = kill_while_writing(process, out / STAGING, nth, rng)
                trigger = f"write #{nth}"
            process.wait()
            now = committed(out)  # raises unless every artifact verifies
            states = ["previous" if now[o] == previous[o] else "new" for o in OBJECTIVES]
            outcomes.update(states)
            left = len(list((out / STAGING).glob(".staging-*"))) if (out / STAGING).exists() else 0
            in_folders = [p for p in out.glob("*/.staging*") if not p.parent.name.startswith(".")]
            if in_folders:
                raise AssertionError(f"staging files in a model folder: {in_folders}")
            print(f"| {i + 1} | {trigger} | {when:.3f} | {writing} | {states[0]} | {states[1]} | {left} | 0 |")
            previous = now
        orphans = [
            p.name
            for p in (out / "gaussian").glob("*.safetensors")
            if p.name.split("-")[1].split(".")[0] not in {sha[:16] for sha in previous.values()}
        ]
        print(
            f"after {args.rounds} SIGKILLs: every artifact verified after every kill"
            f" ({EXPECTED['artifacts']} of {EXPECTED['artifacts']}, none refused);"
            f" killed artifacts: {outcomes['previous']} previous, {outcomes['new']} new (complete);"
            f" no staging file in a model folder; unreferenced complete weights files left: {len(orphans)}"
        )
        subprocess.run(command(out, 2000), env=env, cwd=ROOT, check=True, capture_output=True)
        left = list((out / STAGING).glob(".staging-*"))
        committed(out)
        print(f"one more whole run: completes, everything verifies, .staging holds {len(left)} file(s) after it")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
