"""Compile (model, objective) pairs into artifacts, in parallel worker processes, with progress bars."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from amortized.artifacts import STAGING, atomic_write, discover_artifacts, save_artifact
from amortized.evaluation import evaluate
from amortized.losses import Objective
from amortized.models import build_model
from amortized.training import compile_network, recipe


@dataclass(frozen=True)
class Job:
    """One compile: which pair, where to, and the overrides of its recipe (None keeps the recipe's)."""

    model: str
    objective: Objective
    out: Path
    seed: int = 0
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warm_start: float = 0.2
    blend: float = 0.4
    position: int = 0


def run_job(job: Job) -> dict:
    """Train, evaluate and save one artifact; returns its summary row. Runs in a worker process."""
    torch.set_num_threads(1)
    model = build_model(job.model)
    config = recipe(
        job.model, job.objective, steps=job.steps, warm_start=job.warm_start, blend=job.blend,
        batch_size=job.batch_size, learning_rate=job.learning_rate, seed=job.seed,
    )
    with tqdm(total=config.total_steps, desc=f"{job.model}/{job.objective}", position=job.position, leave=True, mininterval=0.5) as bar:

        def progress(step: int, running_loss: float, phase: str) -> None:
            if step % 50 == 0 or step == config.total_steps:
                bar.set_postfix(loss=f"{running_loss:.4f}", phase=phase, refresh=False)
                bar.update(step - bar.n)

        network, result = compile_network(model, config, progress=progress)
    metrics = evaluate(model, network, job.objective)
    path = save_artifact(job.out, model, network, job.objective, config, result, metrics)
    return {"model": job.model, "objective": job.objective, "seconds": result["seconds"], "path": str(path), "metrics": metrics}


def compile_all(jobs: list[Job], workers: int) -> list[dict]:
    """Run ``jobs`` over ``workers`` processes (in-process when 1); longest first, so the pool finishes together."""
    jobs = sorted(jobs, key=lambda j: -recipe(j.model, j.objective, steps=j.steps).total_steps)
    jobs = [Job(**{**job.__dict__, "position": i}) for i, job in enumerate(jobs)]
    if workers <= 1:
        return [run_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_job, jobs))


def write_figures(out: Path, models: set[str]) -> list[Path]:
    """Redraw each model's figures from the artifacts now on disk, pq and qp side by side."""
    from amortized import figures  # matplotlib is imported only when figures are drawn

    loaded, _ = discover_artifacts(out)
    written = []
    for name in sorted(models):
        networks = {objective: artifact.network for (model, objective), artifact in sorted(loaded.items()) if model == name}
        if not networks:
            continue
        model = next(a.model for (m, _), a in loaded.items() if m == name)
        for filename, png in figures.model_figures(model, networks).items():
            atomic_write(out / name / filename, png, out / STAGING)
            written.append(out / name / filename)
    return written


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started
