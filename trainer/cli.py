"""``python -m trainer compile|figures|report|upgrade``: the compiler's command line.

Compile variants into artifacts, redraw their figures, tabulate them, or upgrade old manifests.

A variant is a family of model with parameters, under a name (amortized/variants.py):

    python -m trainer compile --all                                  # the four defaults, named after their families
    python -m trainer compile --spec examples/variants/gmm_sigma5.json
    python -m trainer compile --spec examples/variants               # every spec file in a folder
    python -m trainer compile --model gmm --name gmm_sigma5 --params '{"sigma": 5}'
    python -m trainer figures [--variant gmm_open_k3]                # redraw the PNGs only
    python -m trainer worker [--queue redis://host:6379/0]            # run the job queue's consumer (trainer/jobs.py)

Every spec is checked before anything is compiled: an invalid one is reported
(file, field and reason), nothing is written, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from amortized.artifacts import ArtifactError, manifest_paths, upgrade_manifest
from amortized.evaluation import Replace, compile_quality
from amortized.losses import OBJECTIVES
from amortized.models import MODELS
from amortized.training import BLEND, WARM_START
from amortized.variants import NAME_RULE, SpecError, VariantSpec, default_spec, parse_spec, read_spec
from trainer.compile import Job, compile_all, timed, write_figures
from trainer.report import report

SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="train, evaluate and save artifacts")
    compile_.add_argument(
        "--model",
        nargs="+",
        choices=list(MODELS),
        metavar="FAMILY",
        help=f"families whose default variants to compile ({', '.join(MODELS)}); with --name and --params, one variant "
        "of one family",
    )
    compile_.add_argument("--all", action="store_true", help="the four default variants")
    compile_.add_argument(
        "--spec",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="variant spec files (JSON, or YAML ending .yaml/.yml), or folders of them",
    )
    compile_.add_argument(
        "--name", help=f"with one --model: the variant's name ({NAME_RULE}); its artifacts go to OUT/NAME/"
    )
    compile_.add_argument(
        "--params", help="with --model and --name: the family's parameters as JSON, e.g. '{\"sigma\": 5}'"
    )
    compile_.add_argument("--objective", nargs="+", choices=OBJECTIVES, help="losses (default: the spec's, else both)")
    compile_.add_argument(
        "--steps", type=positive_int, help="total optimiser steps (default: the spec's, else the family's recipe)"
    )
    compile_.add_argument(
        "--batch-size", type=positive_int, help="observations per step (default: the spec's, else the recipe's)"
    )
    compile_.add_argument(
        "--learning-rate", type=positive_float, help="Adam's initial rate, decayed by a cosine (default: the recipe's)"
    )
    compile_.add_argument(
        "--seed", type=whole_int, help="seed of initialisation and training (default: the spec's, else 0)"
    )
    compile_.add_argument(
        "--warm-start", type=fraction, help=f"qp only: fraction of steps on pq first (default {WARM_START})"
    )
    compile_.add_argument(
        "--blend", type=fraction, help=f"qp only: fraction of steps blending pq into qp (default {BLEND})"
    )
    compile_.add_argument(
        "--mixture-components",
        type=positive_int,
        help="K normals on x per discrete branch (the mixture family; default: the spec's, else 1: single normals)",
    )
    compile_.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    compile_.add_argument("--jobs", type=positive_int, default=2, help="parallel worker processes (default 2)")
    compile_.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    compile_.add_argument(
        "--replace",
        choices=get_args(Replace),
        default="always",
        help="always (default): a new network replaces the one in --out; if_better: not when it scores clearly worse "
        "on the test set (its objective's KL; the job API's default); a network kept so makes the exit status 1",
    )

    report_ = commands.add_parser("report", help="print the evaluation table of all artifacts")
    report_.add_argument("--dir", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    report_.add_argument("--format", choices=["text", "markdown"], default="text")

    figures_ = commands.add_parser(
        "figures", help="redraw the PNG figures of the artifacts on disk (weights and manifests untouched)"
    )
    figures_.add_argument("--dir", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    figures_.add_argument(
        "--variant", nargs="+", metavar="NAME", help="variants to redraw (default: every one under --dir)"
    )

    worker = commands.add_parser(
        "worker",
        help="consume the job queue: compile the specs posted to POST /v1/models (one job per worker process, niced)",
    )
    worker.add_argument(
        "--queue",
        default=os.environ.get("AMORTIZED_QUEUE") or None,
        help="the queue: redis://host:port/db or sqlite:///path (default $AMORTIZED_QUEUE, else the embedded SQLite "
        "file under the artifacts folder)",
    )
    worker.add_argument(
        "--artifacts",
        type=Path,
        default=Path(os.environ.get("AMORTIZED_ARTIFACTS_DIR") or "artifacts"),
        help="the artifacts folder the API serves (default $AMORTIZED_ARTIFACTS_DIR, else artifacts/)",
    )
    for flag, variable, kind, fallback, text in WORKER_OPTIONS:
        # the environment is read by the worker command, not here: a bad value must not break the other commands
        worker.add_argument(flag, type=kind, help=f"{text} (default ${variable}, else {fallback})")
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the embedded consumer: stop with the server

    upgrade = commands.add_parser(
        "upgrade", help="rewrite format-1 manifests as format 2 (variant and family); weights untouched"
    )
    upgrade.add_argument("--dir", type=Path, default=Path("artifacts"), help="artifact folder (default artifacts/)")
    return root


def number(text: str, kind: type, what: str) -> Any:
    """``text`` as ``kind`` (int or float), or the argument error that names what was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def whole_at_least(least: int | None) -> Callable[[str], int]:
    """argparse's type for a whole number, at least ``least`` unless it is None."""

    def whole(text: str) -> int:
        value = number(text, int, "a whole number")
        if least is not None and value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return whole


positive_int, whole_int = whole_at_least(1), whole_at_least(None)


def positive_float(text: str) -> float:
    value = number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = number(text, float, "a number between 0 and 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# the worker's options that default to an environment variable: (flag, variable, type, default, help)
WORKER_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], float, str], ...] = (
    ("--workers", "AMORTIZED_JOB_WORKERS", positive_int, 1, "jobs at once, one process each; at most the cores"),
    (
        "--nice",
        "AMORTIZED_JOB_NICE",
        whole_int,
        10,
        "added to the worker's niceness, so that an API here keeps its CPU",
    ),
    ("--stale-seconds", "AMORTIZED_JOB_STALE_SECONDS", positive_float, 15, "no heartbeat for this long: failed"),
)


def spec_files(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its spec files (sorted)."""
    out: list[Path] = []
    for path in paths:
        out += sorted(p for p in path.iterdir() if p.suffix.lower() in SPEC_SUFFIXES) if path.is_dir() else [path]
    return out


def command_line_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec that --model FAMILY --name NAME --params JSON describe, as plain data (validated by parse_spec)."""
    if len(args.model) != 1:
        raise SpecError("--model", [("", "--name and --params make one variant: give exactly one family")])
    if args.name is None:
        raise SpecError(
            "--params",
            [
                (
                    "",
                    "a variant with parameters of its own needs a name: add --name (e.g. --name "
                    f"{args.model[0]}_custom); "
                    f"--name {args.model[0]} replaces the default variant",
                )
            ],
        )
    params: Any = {}
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as error:
            raise SpecError("--params", [("", f"not valid JSON: {error}")]) from None
    return {"name": args.name, "family": args.model[0], "params": params}


def with_overrides(spec: VariantSpec, args: argparse.Namespace, source: str) -> VariantSpec:
    """The spec with the command line's training settings and objectives on top (validated again, as a whole)."""
    training = spec.training.model_dump(exclude_unset=True)
    flags = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "warm_start": args.warm_start,
        "blend": args.blend,
    }
    training.update({key: value for key, value in flags.items() if value is not None})
    data = {**spec.model_dump(), "training": training}
    if args.mixture_components is not None:
        data["family_options"] = {**data.get("family_options", {}), "mixture_components": args.mixture_components}
    if args.objective:
        data["objectives"] = list(dict.fromkeys(args.objective))
    return parse_spec(data, source)


def variants(args: argparse.Namespace) -> list[VariantSpec]:
    """Every variant the command line asks for, checked in full before anything is compiled.

    SpecError lists every problem.
    """
    found: list[tuple[str, Any]] = []  # (source, spec or raw data)
    problems: list[SpecError] = []
    if args.all:
        found += [(family, default_spec(family)) for family in MODELS]
    if args.model and (args.name is not None or args.params is not None):
        try:
            found.append(("command line", command_line_spec(args)))
        except SpecError as error:
            problems.append(error)
    elif args.model:
        found += [(family, default_spec(family)) for family in args.model]
    for path in spec_files(args.spec or []):
        try:
            found.append((str(path), read_spec(path)))
        except SpecError as error:
            problems.append(error)
    out: list[VariantSpec] = []
    for source, spec in found:
        try:
            data = spec.model_dump(exclude_unset=True) if isinstance(spec, VariantSpec) else spec
            out.append(with_overrides(parse_spec(data, source), args, source))
        except SpecError as error:
            problems.append(error)
    names = [spec.name for spec in out]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(
            SpecError(name, [("name", f"variant {name!r} is asked for more than once; each name is one folder")])
        )
    if problems:
        raise SpecError(
            "", [(p.source + (": " + where if where else ""), why) for p in problems for where, why in p.problems]
        )
    return out


# a spec field and the compile flag that sets it, to name the flag beside the field when the flag was given
FLAG_OF_FIELD = {
    "training.steps": "steps",
    "training.batch_size": "batch_size",
    "training.learning_rate": "learning_rate",
    "training.seed": "seed",
    "training.warm_start": "warm_start",
    "training.blend": "blend",
    "family_options.mixture_components": "mixture_components",
    "params": "params",
    "name": "name",
}


def flag_hint(where: str, args: argparse.Namespace) -> str:
    """The flag that set the field at ``where`` ("gmm: training.steps") as " (from --steps)", or "" if none."""
    field = where.rpartition(": ")[2]
    if field == "training":  # the schedule's own rule: warm_start and blend together
        given = [name for name in ("warm_start", "blend") if getattr(args, name, None) is not None]
    else:
        given = [
            name
            for key, name in FLAG_OF_FIELD.items()
            if (field == key or field.startswith(key + ".")) and getattr(args, name, None) is not None
        ]
    return f" (from {', '.join('--' + name.replace('_', '-') for name in given)})" if given else ""


def compile_command(args: argparse.Namespace) -> int:
    if (args.name is not None or args.params is not None) and not args.model:
        print("error: --name and --params go with --model FAMILY", file=sys.stderr)
        return 2
    if not (args.all or args.model or args.spec):
        print(
            "error: say what to compile: --all, --model FAMILY [--name NAME --params JSON], or --spec FILE",
            file=sys.stderr,
        )
        return 2
    try:
        specs = variants(args)
    except SpecError as error:
        for where, why in error.problems:
            print(f"error: {where}{flag_hint(where, args)}: {why}", file=sys.stderr)
        print("nothing compiled: the variant is invalid (its spec file, or the flags that set it)", file=sys.stderr)
        return 2
    for spec in specs:
        if spec.name in MODELS and spec.params != default_spec(spec.name).params:
            print(
                f"note: {spec.name} is a default variant's name: its artifacts in {args.out / spec.name} will have "
                "other parameters",
                file=sys.stderr,
            )
    created: list[Path] = []  # the folders this command made: removed again if they end up empty
    try:  # before any training: an --out that cannot hold the artifacts would only fail at the first save
        for spec in specs:
            folder = args.out / spec.name
            created += reversed([p for p in (folder, *folder.parents) if not p.exists()])
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        remove_empty(created)
        print(
            f"error: --out {args.out}: cannot hold the artifacts ({error.strerror or error}); nothing compiled",
            file=sys.stderr,
        )
        return 2
    jobs = [
        Job(spec=spec, objective=objective, out=args.out, replace=args.replace)
        for spec in specs
        for objective in spec.objectives
    ]
    try:
        results, seconds = timed(compile_all, jobs, args.jobs, not args.no_figures)
    except KeyboardInterrupt:
        print("\ninterrupted: artifacts already written are complete; the others are unchanged", file=sys.stderr)
        return 130
    finally:  # after a compile that wrote, every folder made holds something and stays
        remove_empty(created)
    print()
    for row in sorted(results, key=lambda r: (r["variant"], r["objective"])):
        gap, t = row["metrics"]["amortisation_gap"], row["times"]
        where = row["path"] or f"not written: the served network {row['kept']['version']} stays ({row['kept']['why']})"
        quality = compile_quality(row["metrics"], row["objective"])
        if quality["verdict"] == "poor":
            where += f"\n  poor: {quality['why']}"
        print(
            f"{row['variant']:>13}/{row['objective']}: gap {'n/a' if gap is None else f'{gap:.4f}'} nats; "
            f"{t['total']:.1f} s (train {t['train']:.1f}, evaluate {t['evaluate']:.1f}, calibrate "
            f"{t['calibrate']:.1f}; "
            f"{t['cpu']:.1f} s CPU) -> {where}"
        )
    kept = sum(row["kept"] is not None for row in results)
    print(f"compiled {len(results) - kept} artifact(s) in {seconds:.1f} s wall-clock")
    if kept:
        print(f"{kept} served network(s) kept (--replace if_better): exit status 1", file=sys.stderr)
    return 1 if kept else 0


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (made by this command, parents first) that are still empty, deepest first."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def upgrade_command(root: Path) -> int:
    status = 0
    for path in manifest_paths(root):
        try:
            print(f"{'upgraded' if upgrade_manifest(path) else 'current '} {path}")
        except (ArtifactError, ValueError, KeyError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            status = 1
    return status


def worker_command(args: argparse.Namespace) -> int:
    from trainer.jobs import embedded_queue_url, run_worker  # Huey: only the worker needs it

    for flag, variable, kind, fallback, _ in WORKER_OPTIONS:  # a flag not given: its variable, else the default
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is None:
            raw = os.environ.get(variable) or str(fallback)
            try:
                setattr(args, name, kind(raw))
            except argparse.ArgumentTypeError as error:
                print(f"error: ${variable}={raw!r} (the default of {flag}): {error}", file=sys.stderr)
                return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_worker(
            args.queue or embedded_queue_url(args.artifacts),
            args.artifacts,
            workers=args.workers,
            nice=args.nice,
            stale_seconds=args.stale_seconds,
            parent_pid=args.parent_pid,
        )
    except ValueError as error:
        print(f"error: --queue: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        text, refused = report(args.dir, markdown=args.format == "markdown")
        print(text)
        return 1 if refused else 0  # a refused artifact is listed, and the exit status says so to scripts
    if args.command == "upgrade":
        return upgrade_command(args.dir)
    if args.command == "worker":
        return worker_command(args)
    if args.command == "figures":
        names = args.variant or [path.name for path in sorted(args.dir.iterdir()) if path.is_dir()]
        written = write_figures(args.dir, set(names))
        assert written is not None  # the list, with report=True (the default)
        for path in written:
            print(path)
        return 0
    return compile_command(args)
