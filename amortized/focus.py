"""Focused observations for the ``qp`` loss: part of each batch drawn where q changes fastest in y.

The amortised ``qp`` objective is E_{r(y)} KL(q(. | y) || p(. | y)) up to
log p(y). Its minimiser at each y is the same whatever the distribution r of
the observations (given a network flexible enough): r decides where the
network spends its effort, not what it aims at. Training draws y from p(y).
Where the best q jumps (gmm's switch between modes at y ~ 0), the network
must build a steep step, and the few observations p(y) puts inside the step
give the weights that set its width and position little gradient: with 256
observations per batch and p(0) = 0.035 per unit of y, about one observation
per step falls within 0.06 of the step. Drawing a quarter of each batch
uniformly from +-0.25 around where q's mean currently moves fastest puts about
16 there on every step (README, "Focused observations").

This uses only the network and the joint density (what the ``qp`` loss already
uses), never the exact posterior. The window follows the step as it moves; it
is located every few steps on a fixed grid of y (see :func:`fastest_change`).

Related: importance-weighted or adaptive choices of the training distribution
of y in amortised inference (e.g. sbi's sequential methods, Greenberg et al.
2019, which move the proposal over parameters towards an observation); here the
per-y target is unchanged, so no weights are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

GRID_POINTS = 16001  # the grid on which the fastest change is located: ~0.005 apart for gmm's p(y)
GRID_QUANTILES = (0.005, 0.995)  # the grid spans p(y)'s central 99%
GRID_SAMPLES = 20000  # joint samples for those quantiles (their own generator: the training stream is untouched)
EVERY = 50  # steps between locations of the fastest change


@dataclass(frozen=True)
class Focus:
    """Draw ``fraction`` of each qp batch uniformly from [centre - half_width, centre + half_width] (y's units)."""

    centre: float
    half_width: float
    fraction: float

    def count(self, batch_size: int) -> int:
        """How many of ``batch_size`` observations the window gets."""
        return int(round(batch_size * self.fraction))


def observation_grid(model: ConjugateMixtureModel, seed: int) -> Tensor:
    """``(GRID_POINTS,)`` float32 y values evenly over p(y)'s central 99%, from joint samples drawn with ``seed``."""
    y = model.sample_joint(GRID_SAMPLES, torch.Generator().manual_seed(seed)).y.double()
    low, high = torch.quantile(y, torch.tensor(GRID_QUANTILES, dtype=torch.float64)).tolist()
    return torch.linspace(low, high, GRID_POINTS, dtype=torch.float32)


def fastest_change(mean: Tensor, grid: Tensor) -> float:
    """The midpoint of the grid interval where ``mean`` (its values on ``grid``, both ``(n,)``) moves most.

    Raises ValueError on fewer than two grid points.
    """
    if grid.numel() < 2:
        raise ValueError("the grid needs at least two points")
    i = int((mean[1:] - mean[:-1]).abs().argmax())
    return float(0.5 * (grid[i] + grid[i + 1]))


@torch.no_grad()
def locate(net: InferenceNetwork, grid: Tensor) -> float:
    """Where q's mean of x (over its branches) moves fastest in y, on ``grid``."""
    q = net(grid)
    return fastest_change((q.probs * q.means).sum(-1).double(), grid)


def draw_observations(
    model: ConjugateMixtureModel, batch_size: int, generator: torch.Generator, focus: Focus | None = None
) -> Tensor:
    """``(batch_size,)`` float32 observations for the qp loss: from p(y), the last ``focus.count`` in its window."""
    if focus is None:
        return model.sample_joint(batch_size, generator).y
    inside = focus.count(batch_size)
    y = model.sample_joint(batch_size - inside, generator).y
    u = torch.rand(inside, generator=generator) * (2 * focus.half_width) - focus.half_width + focus.centre
    return torch.cat([y, u.float()])
