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
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_serializer, model_validator

from amortized import focus as focusing
from amortized.losses import Objective, blended_loss
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork, build_network, tanh_through_sigmoid

# The continuation schedule of qp (README, "qp on gmm"): fractions of the steps on pq first, then blending pq into qp.
WARM_START, BLEND = 0.2, 0.4


FOCUS_FIELDS = ("focus", "focus_width")


class Phase(BaseModel):
    """``steps`` of ``objective``; with ``blend_from``, the loss slides linearly from that one to it."""

    objective: Objective
    steps: int = Field(..., ge=0)
    blend_from: Objective | None = None
    batch_size: int | None = Field(None, ge=1, description="this phase's batch size (default: the config's)")
    learning_rate: float | None = Field(None, gt=0, description="this phase's initial rate (default: the config's)")
    average: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights with this decay; the phase ends on the average",
    )
    keep_moments: bool | None = Field(
        None, description="continue Adam's moments from the previous phase instead of starting afresh"
    )
    focus: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="qp: this fraction of each batch's observations drawn uniformly within focus_width of where q's "
        "mean moves fastest in y, the rest from p(y) (amortized.focus)",
    )
    focus_width: float | None = Field(None, gt=0, description="the focus window's half-width, in y's units")

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler):
        """The per-phase options appear in a manifest only where set (a plain phase keeps its three keys)."""
        data = handler(self)
        return {
            k: v
            for k, v in data.items()
            if v is not None or k not in ("batch_size", "learning_rate", "average", "keep_moments", *FOCUS_FIELDS)
        }

    @model_validator(mode="after")
    def _focus_whole(self) -> Phase:
        """focus and focus_width come together, on a phase whose loss includes qp (pq's y come with its x)."""
        if (self.focus is None) != (self.focus_width is None):
            raise ValueError("focus and focus_width must be given together")
        if self.focus is not None and "qp" not in (self.objective, self.blend_from):
            raise ValueError("focus applies to the qp loss: give it on a phase that includes qp")
        return self


class TrainingConfig(BaseModel):
    """Everything that determines a compile, recorded in the artifact's manifest."""

    schedule: list[Phase]
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    final_learning_rate: float = Field(1e-4, gt=0, description="cosine decay target, per phase")
    num_particles: int = Field(8, ge=1, description="reparameterised x draws per branch in the qp loss")
    seed: int = 0
    family_options: dict[str, Any] = Field(
        default_factory=dict,
        description='options of the network family beyond its defaults, e.g. {"mixture_components": 2}: K normals per '
        "branch",
    )
    gradients: Literal["closed_form", "autograd"] | None = Field(
        None,
        description="how the losses' gradients are computed for single-normal networks: in closed form "
        "(amortized.losses.SingleNormalQP, SingleNormalPQ; what the recipes set, but gmm's qp) or by autograd "
        "through the losses' every operation (the same gradients, rounded differently: gmm's qp recipe keeps the "
        "arithmetic its seed study was measured with). Absent (None): autograd, as every compile before the closed "
        "form was, so an older manifest still says how its network was trained",
    )

    tanh: Literal["sigmoid", "torch"] | None = Field(
        None,
        description="how the hidden layers' tanh is computed in training: as 2 sigmoid(2x) - 1 (the same function "
        "within 1.8e-7, a third of the time: amortized.networks.branched_mlp.Tanh; what the recipes set, but gmm's qp) "
        "or by torch's tanh (gmm's qp recipe keeps the arithmetic its seed study was measured with). Absent (None): "
        "torch's, as every compile before this setting was",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_arithmetic(self, handler):
        """``gradients`` and ``tanh`` appear in a manifest where set (an older one, without them, reads back as is)."""
        data = handler(self)
        return {k: v for k, v in data.items() if k not in ("gradients", "tanh") or v is not None}

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.schedule)


def default_schedule(
    objective: Objective,
    steps: int,
    warm_start: float = WARM_START,
    blend: float = BLEND,
    restarts: int = 1,
    focus: tuple[float, float] | None = None,
) -> list[Phase]:
    """One phase of ``objective``; for qp: pq, then a blend from pq to qp, then qp (fractions of ``steps``).

    ``restarts``: the final qp steps as that many equal phases, each starting
    Adam afresh at the full learning rate (warm restarts; see the README, "qp on gmm").
    ``focus``: (fraction, half-width) of the final qp phases' focused observations (:mod:`amortized.focus`).
    A part that rounds to no steps (a few total steps) is left out, so the
    manifest lists only phases that trained.
    """
    if objective == "pq" or warm_start + blend <= 0:
        return [Phase(objective=objective, steps=steps)]
    # the boundaries rounded, not the parts: round(a) + round(b) may exceed steps (3 steps at 0.5 and 0.5 gave 2 + 2);
    # rounding keeps their order, and min keeps a sum a rounding above 1 within the steps
    warm, cut = (min(int(round(steps * fraction)), steps) for fraction in (warm_start, warm_start + blend))
    blended, final = cut - warm, steps - cut
    sizes = [final // restarts + (i < final % restarts) for i in range(restarts)]
    focused: dict[str, Any] = {} if focus is None else dict(zip(FOCUS_FIELDS, focus, strict=True))
    phases = [
        Phase(objective="pq", steps=warm),
        Phase(objective=objective, steps=blended, blend_from="pq"),
        *(Phase(objective=objective, steps=size, **focused) for size in sizes),
    ]
    return [phase for phase in phases if phase.steps > 0]


ProgressCallback = Callable[[int, float, str], None]


class FlatAdam:
    """Adam (Kingma & Ba 2015) on one flat buffer that every parameter is a view of.

    The same update as ``torch.optim.Adam`` with default betas and eps (bias
    corrections included), as a handful of tensor operations on the whole
    buffer instead of a few per parameter: for networks of a few thousand
    weights the optimiser's fixed cost per call was a fifth of a step. It also
    keeps ``torch.optim`` out of the compile, whose first use imports
    ``torch._dynamo`` (a second per worker process).
    """

    def __init__(
        self, parameters: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.parameters = parameters
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in parameters])
            offset = 0
            for p in parameters:  # every parameter becomes a view of the flat buffer
                p.data = self.flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        self.betas, self.eps = betas, eps
        self.reset()

    def reset(self) -> None:
        """Forget the moments (a new phase starts a new optimiser)."""
        self.exp_avg, self.exp_avg_sq, self.steps = torch.zeros_like(self.flat), torch.zeros_like(self.flat), 0

    @torch.no_grad()
    def step(self, gradients: tuple[torch.Tensor, ...], lr: float) -> None:
        grad = torch.cat([g.reshape(-1) for g in gradients])
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.steps)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-lr / (1 - beta1**self.steps))


def cosine(rate: float, final: float, i: int, steps: int) -> float:
    """The learning rate at step ``i`` of a phase of ``steps``: cosine decay from ``rate`` to ``final``."""
    return final + (rate - final) * 0.5 * (1 + math.cos(math.pi * i / max(steps, 1)))


def train(
    model: ConjugateMixtureModel,
    net: InferenceNetwork,
    config: TrainingConfig,
    progress: ProgressCallback | None = None,
) -> dict:
    """Train ``net`` in place; deterministic for a given config. Returns a short history."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    parameters: list[torch.Tensor] = [p for p in net.parameters() if p.requires_grad]
    optimiser = FlatAdam(parameters)
    step, started, history = 0, time.perf_counter(), []
    with tanh_through_sigmoid(net, config.tanh == "sigmoid"):
        grid = focusing.observation_grid(model, config.seed) if any(p.focus for p in config.schedule) else None
        for phase in config.schedule:
            if not phase.keep_moments:
                optimiser.reset()
            running = math.nan
            batch_size = phase.batch_size or config.batch_size
            rate = phase.learning_rate or config.learning_rate
            average = optimiser.flat.clone() if phase.average else None
            window: focusing.Focus | None = None
            for i in range(phase.steps):
                # the window follows q's step as it moves, located every EVERY steps
                if phase.focus and phase.focus_width and grid is not None and i % focusing.EVERY == 0:
                    window = focusing.Focus(focusing.locate(net, grid), phase.focus_width, phase.focus)
                weights: dict = {phase.objective: 1.0}
                if phase.blend_from is not None:
                    weight = (i + 1) / phase.steps
                    weights = {phase.objective: weight, phase.blend_from: 1 - weight}
                value = blended_loss(
                    weights,
                    model,
                    net,
                    batch_size,
                    generator,
                    num_particles=config.num_particles,
                    closed_form=config.gradients == "closed_form",
                    focus=window,
                )
                gradients = torch.autograd.grad(value, parameters)
                optimiser.step(gradients, cosine(rate, config.final_learning_rate, i, phase.steps))
                if average is not None:
                    assert phase.average is not None  # average is kept only when phase.average is set
                    average.lerp_(optimiser.flat, 1 - phase.average)
                step += 1
                current = value.item()
                running = current if math.isnan(running) else 0.98 * running + 0.02 * current
                if progress is not None:
                    progress(step, running, phase.objective)
            if average is not None:
                optimiser.flat.copy_(average)
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
    network = build_network(model, architecture, config.family_options)
    return network, train(model, network, config, progress)


# Settings that meet the project's targets (README results table) in seconds on a CPU.
# gmm's qp needs the longest: the switch between modes at y ~ 0 must become sharp. Optional per recipe and
# objective: "family_options" and "restarts" (see the README, "qp on gmm"). Steps and batch sizes may be per
# objective: pq takes fewer, larger batches (README, "Compile time": a step costs about the same at 256 and at
# 1024 observations, and 1500 steps of 1024 left smaller gaps than 3000 of 256); qp keeps its measured schedule.
RECIPES: dict[str, dict] = {
    "gaussian": {"steps": {"pq": 750, "qp": 1500}, "batch_size": {"pq": 2048, "qp": 1024}, "learning_rate": 0.05},
    "gmm": {
        "steps": {"pq": 1500, "qp": 10000},
        "batch_size": {"pq": 1024, "qp": 256},
        "learning_rate": 0.01,
        "family_options": {"qp": {"input_gain": 30.0}},
        "restarts": {"qp": 2},
        # the final qp phases draw a quarter of each batch within 0.25 of the switch (README, "qp on gmm")
        "focus": {"qp": (0.25, 0.25)},
        # qp's result is chaotic in the rounding (README, "Determinism"): its seed table was measured with autograd's
        # gradients and torch's tanh (through the sigmoid, one-ulp starts gave gaps up to 0.0018: "Compile time")
        "gradients": {"qp": "autograd"},
        "tanh": {"qp": "torch"},
    },
    "gmm_discrete": {"steps": {"pq": 1500, "qp": 3000}, "batch_size": {"pq": 1024, "qp": 256}, "learning_rate": 0.01},
    "gmm_open": {"steps": {"pq": 1500, "qp": 3000}, "batch_size": {"pq": 1024, "qp": 256}, "learning_rate": 0.01},
}
DEFAULT_RECIPE = RECIPES["gmm_discrete"]


def recipe(
    model_name: str,
    objective: Objective,
    steps: int | None = None,
    warm_start: float = WARM_START,
    blend: float = BLEND,
    family_options: dict[str, Any] | None = None,
    **overrides,
) -> TrainingConfig:
    """The recommended TrainingConfig for (model, objective); keyword arguments override it.

    ``family_options`` are merged over the recipe's own (``{"mixture_components": 2}`` keeps gmm qp's input gain).
    """
    base = RECIPES.get(model_name, DEFAULT_RECIPE)
    settings = {"batch_size": per_objective(base["batch_size"], objective), "learning_rate": base["learning_rate"]}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    restarts = base.get("restarts", {}).get(objective, 1)
    focus = base.get("focus", {}).get(objective)
    schedule = default_schedule(
        objective, steps or per_objective(base["steps"], objective), warm_start, blend, restarts, focus
    )
    options = {**base.get("family_options", {}).get(objective, {}), **(family_options or {})}
    arithmetic = {
        "gradients": base.get("gradients", {}).get(objective, "closed_form"),
        "tanh": base.get("tanh", {}).get(objective, "sigmoid"),
    }
    return TrainingConfig(schedule=schedule, family_options=options, **{**arithmetic, **settings})


def per_objective(setting: Any, objective: Objective) -> Any:
    """A recipe's setting for ``objective``: its entry where the setting is given per objective, else the setting."""
    return setting[objective] if isinstance(setting, dict) else setting
