"""Compiling a network: stochastic gradient descent on a schedule of loss phases.

A schedule is a list of phases, each an objective with a number of steps. The
plain schedule is one phase of the artifact's own loss. For ``qp`` the default
is *continuation from the mass-covering solution*: a short ``pq`` phase first,
whose q covers every mode and leans towards the heavier one, then ``qp`` from
there, which lets each y collapse onto the mode it already leans to. Started
from scratch, ``qp`` tends to trap every y on the same mode (docs/science.md, ``gmm``).
Both phases use only what the losses may: samples of the joint, and its density.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, Field

from amortized.losses import Objective, loss
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork, build_network


class Phase(BaseModel):
    """``steps`` of ``objective``; with ``blend_from``, the loss slides linearly from that one to it."""

    objective: Objective
    steps: int = Field(..., ge=0)
    blend_from: Objective | None = None


class TrainingConfig(BaseModel):
    """Everything that determines a compile, recorded in the artifact's manifest."""

    schedule: list[Phase]
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    final_learning_rate: float = Field(1e-4, gt=0, description="cosine decay target, per phase")
    num_particles: int = Field(8, ge=1, description="reparameterised x draws per branch in the qp loss")
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.schedule)


def default_schedule(objective: Objective, steps: int, warm_start: float = 0.2, blend: float = 0.4) -> list[Phase]:
    """One phase of ``objective``; for qp: pq, then a blend from pq to qp, then qp (fractions of ``steps``)."""
    if objective == "pq" or warm_start + blend <= 0:
        return [Phase(objective=objective, steps=steps)]
    warm, blended = int(round(steps * warm_start)), int(round(steps * blend))
    return [
        Phase(objective="pq", steps=warm),
        Phase(objective=objective, steps=blended, blend_from="pq"),
        Phase(objective=objective, steps=steps - warm - blended),
    ]


ProgressCallback = Callable[[int, float, str], None]


def train(
    model: ConjugateMixtureModel,
    net: InferenceNetwork,
    config: TrainingConfig,
    progress: ProgressCallback | None = None,
) -> dict:
    """Train ``net`` in place; deterministic for a given config. Returns a short history."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    step, started, history = 0, time.perf_counter(), []
    for phase in config.schedule:
        optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
        decay = config.final_learning_rate / config.learning_rate
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda i: decay + (1 - decay) * 0.5 * (1 + math.cos(math.pi * i / max(phase.steps, 1)))
        )
        running = math.nan
        for i in range(phase.steps):
            optimiser.zero_grad(set_to_none=True)
            value = loss(phase.objective, model, net, config.batch_size, generator, config.num_particles)
            if phase.blend_from is not None:
                weight = (i + 1) / phase.steps
                previous = loss(phase.blend_from, model, net, config.batch_size, generator, config.num_particles)
                value = weight * value + (1 - weight) * previous
            value.backward()
            optimiser.step()
            schedule.step()
            step += 1
            running = value.item() if math.isnan(running) else 0.98 * running + 0.02 * value.item()
            if progress is not None:
                progress(step, running, phase.objective)
        history.append({"objective": phase.objective, "steps": phase.steps, "final_loss": running})
    return {"phases": history, "seconds": time.perf_counter() - started}


def compile_network(
    model: ConjugateMixtureModel,
    config: TrainingConfig,
    architecture: dict | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[InferenceNetwork, dict]:
    """Initialise a network from ``config.seed`` and train it: the whole compile, reproducible."""
    torch.manual_seed(config.seed)
    network = build_network(model, architecture)
    return network, train(model, network, config, progress)


# Settings that meet the project's targets (README results table) in seconds on a CPU.
# gmm's qp needs the longest: the switch between modes at y ~ 0 must become sharp.
RECIPES: dict[str, dict] = {
    "gaussian": {"steps": {"pq": 1500, "qp": 1500}, "batch_size": 1024, "learning_rate": 0.05},
    "gmm": {"steps": {"pq": 3000, "qp": 10000}, "batch_size": 256, "learning_rate": 0.01},
    "gmm_discrete": {"steps": {"pq": 3000, "qp": 3000}, "batch_size": 256, "learning_rate": 0.01},
    "gmm_open": {"steps": {"pq": 3000, "qp": 3000}, "batch_size": 256, "learning_rate": 0.01},
}
DEFAULT_RECIPE = RECIPES["gmm_discrete"]


def recipe(
    model_name: str,
    objective: Objective,
    steps: int | None = None,
    warm_start: float = 0.2,
    blend: float = 0.4,
    **overrides,
) -> TrainingConfig:
    """The recommended TrainingConfig for (model, objective); keyword arguments override it."""
    base = RECIPES.get(model_name, DEFAULT_RECIPE)
    settings = {"batch_size": base["batch_size"], "learning_rate": base["learning_rate"]}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    schedule = default_schedule(objective, steps or base["steps"][objective], warm_start, blend)
    return TrainingConfig(schedule=schedule, **settings)
