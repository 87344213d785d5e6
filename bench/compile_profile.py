"""Where the compile's time goes: CPU seconds of each part of compiling all eight artifacts, in one process.

Runs every default (variant, objective) job the way a compiler worker does
(one torch thread), timing with the process's CPU clock: start-up imports,
each training phase (pq, the pq-to-qp blend, qp; steps and milliseconds per
step), evaluation, calibration and saving, then each model's figures. One
process and CPU time, so the table is comparable between runs on a machine
shared with other work (the wall-clock time of `bench/compile_all.py` is not).

    .venv/bin/python bench/compile_profile.py [--pairs gmm/qp gmm_open/pq ...]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = {"torch": "import torch", "the trainer (torch included)": "import trainer.cli"}
FIGURES_IMPORT = (
    "import time, trainer.cli; t = time.process_time(); import amortized.figures; print(time.process_time() - t)"
)


def import_seconds(statement: str) -> float:
    """CPU seconds (user + system) of a fresh interpreter running ``statement``, less a bare interpreter's."""

    def run(code: str) -> float:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import resource\n{code}\nu = resource.getrusage(resource.RUSAGE_SELF)\n"
                "print(u.ru_utime + u.ru_stime)",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        return float(done.stdout.split()[-1])

    return min(run(statement) for _ in range(2)) - min(run("pass") for _ in range(2))


def phase_label(phase) -> str:
    return f"{phase.blend_from}->{phase.objective}" if phase.blend_from else phase.objective


def profile_job(pair: str, out: Path) -> list[tuple[str, str, str, float]]:
    """One job as a worker runs it (train, evaluate, calibrate, save), each part's CPU seconds; training per phase."""
    from amortized.artifacts import save_artifact
    from amortized.calibration import calibration
    from amortized.evaluation import evaluate
    from amortized.training import compile_network
    from amortized.variants import default_spec

    name, objective = pair.split("/")
    spec = default_spec(name)
    model, config = spec.build_model(), spec.training_config(objective)
    ends = {sum(p.steps for p in config.schedule[: i + 1]): i for i in range(len(config.schedule))}
    phase_seconds = [0.0] * len(config.schedule)
    last = [time.process_time()]

    def progress(step: int, running: float, phase: str) -> None:
        if step in ends:  # the last step of a phase
            now = time.process_time()
            phase_seconds[ends[step]], last[0] = now - last[0], now

    network, result = compile_network(model, config, progress=progress)
    totals: dict[str, list] = {}
    for phase, seconds in zip(config.schedule, phase_seconds):
        entry = totals.setdefault(phase_label(phase), [0, 0.0])
        entry[0] += phase.steps
        entry[1] += seconds
    rows = [
        (pair, f"train: {label}", f"{steps} steps, {1e3 * seconds / steps:.2f} ms/step", seconds)
        for label, (steps, seconds) in totals.items()
    ]
    started = time.process_time()
    metrics = evaluate(model, network, objective)
    rows.append((pair, "evaluate", "", time.process_time() - started))
    started = time.process_time()
    metrics["calibration"] = calibration(model, network)
    rows.append((pair, "calibrate", "", time.process_time() - started))
    started = time.process_time()
    save_artifact(out, model, network, objective, config, result, metrics, variant=name)
    rows.append((pair, "save", "", time.process_time() - started))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", help="variant/objective pairs (default: the eight defaults)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from amortized.models import MODELS
    from trainer.compile import write_figures

    torch.set_num_threads(1)  # as in each compiler worker
    rows: list[tuple[str, str, str, float]] = []  # (pair, part, detail, CPU seconds)
    torch_seconds, trainer_seconds = (import_seconds(statement) for statement in IMPORTS.values())
    rows.append(("start-up", "import torch", "once, before the workers fork", torch_seconds))
    rows.append(
        ("start-up", "import the rest of the trainer", "once, before the workers fork", trainer_seconds - torch_seconds)
    )
    done = subprocess.run([sys.executable, "-c", FIGURES_IMPORT], cwd=ROOT, check=True, capture_output=True, text=True)
    rows.append(("start-up", "import matplotlib (the figures)", "in each worker that draws", float(done.stdout)))
    pairs = args.pairs or [f"{m}/{o}" for m in MODELS for o in ("pq", "qp")]
    with tempfile.TemporaryDirectory() as out:
        for pair in pairs:
            rows += profile_job(pair, Path(out))
            print(f"{pair} done", file=sys.stderr)
        for name in sorted({pair.split("/")[0] for pair in pairs}):
            started = time.process_time()
            write_figures(Path(out), {name}, False)
            rows.append((name, "figures", "posteriors.png, network_outputs.png", time.process_time() - started))
    total = sum(r[3] for r in rows)
    print(f"{'pair':<16} {'part':<36} {'detail':<30} {'CPU s':>7} {'share':>6}")
    for pair, part, detail, seconds in rows:
        print(f"{pair:<16} {part:<36} {detail:<30} {seconds:7.2f} {100 * seconds / total:5.1f}%")
    groups: dict[str, float] = {}
    for _, part, _, seconds in rows:
        key = "training" if part.startswith("train") else "start-up" if part.startswith("import") else part
        groups[key] = groups.get(key, 0.0) + seconds
    print("\n" + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in groups.items()))
    print(f"all parts: {total:.1f} s CPU; split over 2 workers about {total / 2:.1f} s wall-clock at best")


if __name__ == "__main__":
    main()
