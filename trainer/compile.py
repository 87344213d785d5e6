"""Compile (variant, objective) pairs into artifacts, in parallel worker processes, with progress bars."""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from amortized.artifacts import STAGING, atomic_write, discover_artifacts, load_artifact, save_artifact
from amortized.calibration import calibration
from amortized.evaluation import Replace, clearly_worse, evaluate
from amortized.losses import Objective
from amortized.models import ConjugateMixtureModel
from amortized.networks import DEFAULT_ARCHITECTURE
from amortized.training import ProgressCallback, compile_network
from amortized.variants import VariantSpec

JobProgress = Callable[[str, int, float, str], None]  # (objective, step, running loss, phase)


@dataclass(frozen=True)
class Job:
    """One compile: which variant and objective, and where to (the spec carries the training settings)."""

    spec: VariantSpec
    objective: Objective
    out: Path
    position: int = 0
    # "always": the new network replaces a served one; "if_better": not when it scores clearly worse (kept_served)
    replace: Replace = "always"

    @property
    def total_steps(self) -> int:
        return self.spec.training_config(self.objective).total_steps


def run_job(job: Job, progress: ProgressCallback | None = None) -> dict:
    """Train, evaluate, calibrate and save one artifact.

    Returns its summary row with times. Runs in a worker process. ``progress``
    (a job of the job API, trainer/jobs.py) is called with (step, running
    loss, phase) at each training step, then at the start of "evaluate",
    "calibrate" and "save"; it may raise to stop the compile.
    """
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    model = job.spec.build_model()
    config = job.spec.training_config(job.objective)
    name = job.spec.name
    with tqdm(
        total=config.total_steps,
        desc=f"{name}/{job.objective}",
        position=job.position,
        leave=True,
        mininterval=0.5,
        disable=progress is not None,  # a job reports to its record (trainer/jobs.py), not as bars in a server's log
    ) as bar:

        def report(step: int, running_loss: float, phase: str) -> None:
            if step % 50 == 0 or step == config.total_steps:
                bar.set_postfix(loss=f"{running_loss:.4f}", phase=phase, refresh=False)
                bar.update(step - bar.n)
            if progress is not None:
                progress(step, running_loss, phase)

        network, result = compile_network(model, config, progress=report)
    last = result["phases"][-1]["final_loss"]
    trained = time.perf_counter()
    if progress is not None:
        progress(config.total_steps, last, "evaluate")
    metrics = evaluate(model, network, job.objective)
    evaluated = time.perf_counter()
    kept = kept_served(job, model, metrics) if job.replace == "if_better" else None
    path = None
    if kept is None:  # else the served network stays: nothing calibrated, nothing written
        if progress is not None:
            progress(config.total_steps, last, "calibrate")
        metrics["calibration"] = calibration(model, network)
    calibrated = time.perf_counter()
    if kept is None:
        if progress is not None:
            progress(config.total_steps, last, "save")
        path = save_artifact(job.out, model, network, job.objective, config, result, metrics, variant=name)
    times = {
        "train": trained - started,
        "evaluate": evaluated - trained,
        "calibrate": calibrated - evaluated,
        "total": time.perf_counter() - started,
        "cpu": time.process_time() - cpu_started,
    }
    return {
        "variant": name,
        "family": job.spec.family,
        "objective": job.objective,
        "seconds": result["seconds"],
        "path": None if path is None else str(path),
        "metrics": metrics,
        "kept": kept,  # None, or the served network that stays: {"version", "why"}
        "times": times,
    }


def kept_served(job: Job, model: ConjugateMixtureModel, metrics: dict) -> dict[str, str] | None:
    """The served network this job's would replace, if the new one scores clearly worse; else None.

    ``{"version": ..., "why": ...}`` (:func:`amortized.evaluation.clearly_worse` says why). Nothing served, a
    manifest that cannot be read, or one of other parameters: None (nothing to keep). A manifest scored on
    another test set is scored again here, on this one.
    """
    path = job.out / job.spec.name / f"{job.objective}.json"
    if not path.exists():
        return None
    try:
        served = load_artifact(path)
    except Exception:  # unreadable or refused (checksum): the registry does not serve it either
        return None
    if (served.manifest.family, served.manifest.model_params) != (job.spec.family, job.spec.params):
        return None
    try:
        why = clearly_worse(metrics, served.manifest.metrics, job.objective)
    except ValueError:  # scored on another test set (an older trainer): scored again on this one
        why = clearly_worse(metrics, evaluate(model, served.network, job.objective), job.objective)
    return None if why is None else {"version": served.manifest.version, "why": why}


# Relative CPU cost of one step, measured on gmm (pq 0.77 ms, the pq-to-qp blend 1.77 ms, qp 1.3 ms at batch 256);
# each further branch adds about 30%, and the linear gaussian family is about a quarter of an MLP.
STEP_COST = {"pq": 1.0, "blend": 2.3, "qp": 1.7}


def estimated_cost(job: Job) -> float:
    """A job's training cost in units of one gmm pq step, for ordering the pool's work."""
    config = job.spec.training_config(job.objective)
    branches = job.spec.build_model().num_branches * job.spec.family_options.mixture_components
    scale = 0.25 if job.spec.family in DEFAULT_ARCHITECTURE else 1 + 0.3 * (branches - 1)
    steps = sum(p.steps * STEP_COST["blend" if p.blend_from else p.objective] for p in config.schedule)
    return steps * scale * (config.batch_size / 256) ** 0.5


def compile_all(
    jobs: list[Job], workers: int, figures: bool = False, progress: JobProgress | None = None
) -> list[dict]:
    """Run ``jobs`` over ``workers`` processes (in-process when 1); longest first, so the pool finishes together.

    With ``figures``, each variant's figures are drawn in the pool as soon as
    its last artifact is written, while the other workers still train.
    ``progress`` (in-process only) gets each job's objective before run_job's
    arguments.
    """
    # longest first: a greedy schedule that ends the pool together
    jobs = sorted(jobs, key=lambda j: -estimated_cost(j))
    jobs = [Job(job.spec, job.objective, job.out, position=i, replace=job.replace) for i, job in enumerate(jobs)]
    outs = {job.spec.name: job.out for job in jobs}
    if workers <= 1:
        results = [run_job(job, progress and functools.partial(progress, job.objective)) for job in jobs]
        if figures:
            for name, out in outs.items():
                write_figures(out, {name})
        return results
    warm_up(figures)
    waiting = {name: sum(job.spec.name == name for job in jobs) for name in outs}
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: set[Future] = {pool.submit(run_job, job) for job in jobs}  # compile jobs, then figure jobs
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                row = future.result()
                if row is None:  # a figure job
                    continue
                results.append(row)
                waiting[row["variant"]] -= 1
                if figures and not waiting[row["variant"]]:
                    pending.add(pool.submit(write_figures, outs[row["variant"]], {row["variant"]}, False))
    return results


def warm_up(figures: bool) -> None:
    """Do once, before the pool forks, the start-up work each worker would repeat.

    numba's compile of the mixture quantiles (the calibration's first call: about 1.4 s of CPU per process, kept
    by the forked workers) and, with ``figures``, matplotlib's import (0.5 s). On two cores this moves CPU time
    from both workers into one serial stretch: the wall-clock time stays about the same, the CPU time falls.
    """
    import numpy as np

    from amortized.distributions import BranchedNormal
    from amortized.summaries import mixture_quantiles

    mixture_quantiles(BranchedNormal(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1))), [0.5])
    if figures:
        from amortized import figures as _  # noqa: F401 (imported for the workers to inherit)


def write_figures(out: Path, variants: set[str], report: bool = True) -> list[Path] | None:
    """Redraw each variant's figures from the artifacts now on disk, pq and qp side by side."""
    from amortized import figures  # matplotlib is imported only when figures are drawn

    torch.set_num_threads(1)
    loaded, _ = discover_artifacts(out, variants)  # theirs only: another variant's files cannot stop these
    written = []
    for name in sorted(variants):
        networks = {
            objective: artifact.network for (variant, objective), artifact in sorted(loaded.items()) if variant == name
        }
        if not networks:
            continue
        model = next(a.model for (v, _), a in loaded.items() if v == name)
        for filename, png in figures.model_figures(model, networks, title=figures.variant_title(name, model)).items():
            atomic_write(out / name / filename, png, out / STAGING)
            written.append(out / name / filename)
    return written if report else None


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started
