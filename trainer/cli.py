"""``python -m trainer compile|report``: compile inference networks into artifacts, or tabulate them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amortized.losses import OBJECTIVES
from amortized.models import MODELS
from trainer.compile import Job, compile_all, timed
from trainer.report import report


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="train, evaluate and save artifacts")
    which = compile_.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", nargs="+", choices=list(MODELS), help="models to compile")
    which.add_argument("--all", action="store_true", help="every model")
    compile_.add_argument("--objective", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES), help="losses (default: both)")
    compile_.add_argument("--steps", type=positive_int, help="total optimiser steps (default: the model's recipe)")
    compile_.add_argument("--batch-size", type=positive_int, help="observations per step (default: the recipe's)")
    compile_.add_argument("--learning-rate", type=positive_float, help="Adam's initial rate, decayed by a cosine (default: the recipe's)")
    compile_.add_argument("--seed", type=int, default=0, help="seed of initialisation and training (default 0)")
    compile_.add_argument("--warm-start", type=fraction, default=0.2, help="qp only: fraction of steps on pq first (default 0.2)")
    compile_.add_argument("--blend", type=fraction, default=0.4, help="qp only: fraction of steps blending pq into qp (default 0.4)")
    compile_.add_argument(
        "--mixture-components", type=positive_int, default=1,
        help="K normals on x per discrete branch (the mixture family; default 1: the single-normal networks)",
    )
    compile_.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    compile_.add_argument("--jobs", type=positive_int, default=2, help="parallel worker processes (default 2)")
    compile_.add_argument("--no-figures", action="store_true", help="skip the PNG figures")

    report_ = commands.add_parser("report", help="print the evaluation table of all artifacts")
    report_.add_argument("--dir", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    report_.add_argument("--format", choices=["text", "markdown"], default="text")
    return root


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        print(report(args.dir, markdown=args.format == "markdown"))
        return 0
    if args.warm_start + args.blend > 1:
        print("error: --warm-start plus --blend must not exceed 1", file=sys.stderr)
        return 2
    models = list(MODELS) if args.all else args.model
    overrides = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                 "warm_start": args.warm_start, "blend": args.blend, "mixture_components": args.mixture_components}
    jobs = [Job(model=m, objective=o, out=args.out, **overrides) for m in models for o in args.objective]
    try:
        results, seconds = timed(compile_all, jobs, args.jobs, not args.no_figures)
    except KeyboardInterrupt:
        print("\ninterrupted: artifacts already written are complete; the others are unchanged", file=sys.stderr)
        return 130
    print()
    for row in sorted(results, key=lambda r: (r["model"], r["objective"])):
        gap, t = row["metrics"]["amortisation_gap"], row["times"]
        print(
            f"{row['model']:>13}/{row['objective']}: gap {'n/a' if gap is None else f'{gap:.4f}'} nats; "
            f"{t['total']:.1f} s (train {t['train']:.1f}, evaluate {t['evaluate']:.1f}, calibrate {t['calibrate']:.1f}; "
            f"{t['cpu']:.1f} s CPU) -> {row['path']}"
        )
    print(f"compiled {len(results)} artifact(s) in {seconds:.1f} s wall-clock")
    return 0
