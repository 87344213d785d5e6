"""The one representation of a posterior: discrete branches, a normal on x in each.

q(b, x | y) = q(b | y) N(x; mean_b(y), std_b(y)^2) for a batch of observations.
The branch b stands for an assignment of the model's discrete latents (for
example ``{"k": 2, "z": 0}``); models without discrete latents have one branch.
Exact posteriors use the same class, with one entry per *mixture component*;
:func:`amortized.evaluation.kl_divergences` groups components into branches
where a model marginalises a discrete choice (``gmm``).

The arrays are torch tensors (training, with gradients) or NumPy arrays (the
request path); every method works on both (see :mod:`amortized.arrays`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from amortized.arrays import Array, flat_index, gather, lib, logsumexp, to_numpy

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
Generator = torch.Generator | np.random.Generator


def normal_log_prob(x: Array, mean: Array, std: Array) -> Array:
    """log N(x; mean, std^2), broadcasting."""
    z = (x - mean) / std
    return -0.5 * z * z - lib(std).log(std) - LOG_SQRT_2PI


def normal_kl(mean_p: Array, std_p: Array, mean_q: Array, std_q: Array) -> Array:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) in closed form."""
    ratio = std_p / std_q
    return 0.5 * (ratio**2 + ((mean_p - mean_q) / std_q) ** 2 - 1.0) - lib(ratio).log(ratio)


class NoiseQuadratic(NamedTuple):
    """A log density at x = mean_b + std_b * eps as a function of the standard-normal draw eps: a + b eps + c eps^2.

    A normal log density of x is a quadratic in x, hence in eps. So once a
    proposal's branch means and stds are known, every log density the
    importance weights need (the proposal's own, another proposal's, the
    model's joint) is three coefficients per (observation, branch), combined
    on those small arrays and evaluated once per draw. Coefficients are
    ``(rows, branches)``, or ``(components, rows, branches)`` for a density
    that is a mixture within a branch (summed, in log space, at evaluation).
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def __sub__(self, other: NoiseQuadratic) -> NoiseQuadratic:  # type: ignore[override]
        return NoiseQuadratic(self.a - other.a, self.b - other.b, self.c - other.c)

    def table(self) -> np.ndarray:
        """The coefficients as one C-ordered array ``(components, rows, branches, 3)`` (one component if not a mixture).

        What :func:`amortized.kernels.weigh_draws` evaluates at each draw.
        """
        shape = np.broadcast_shapes(*(v.shape for v in self))
        table = np.empty((*shape, 3))
        for i, coefficient in enumerate(self):  # filled in place: cheaper than broadcast_arrays + stack on small arrays
            table[..., i] = coefficient
        return table if table.ndim == 4 else table[None]


def normal_log_prob_in_noise(mean_x: np.ndarray, std_x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> NoiseQuadratic:
    """log N(x; mean, std^2) at x = mean_x + std_x * eps, as a quadratic in eps (broadcasting)."""
    offset, ratio = (mean_x - mean) / std, std_x / std
    return NoiseQuadratic(-0.5 * offset * offset - np.log(std) - LOG_SQRT_2PI, -offset * ratio, -0.5 * ratio * ratio)


FEW_CATEGORIES = 16  # up to this many, counting the CDF edges below each draw beats a binary search


def cdf_edges(weights: np.ndarray) -> np.ndarray:
    """Per row, the normalised CDF of ``weights`` below each category but the first: a uniform at or past
    ``edges[i]`` falls in category i + 1 or later."""
    cdf = np.cumsum(weights, -1)
    return cdf[:, :-1] / cdf[:, -1:]


def inverse_cdf(weights: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Per row, the index whose cumulative normalised weight first exceeds each uniform draw.

    Few categories (branches): one comparison per category edge, vectorised
    over rows and draws. Many (resampling N draws): one ``searchsorted`` for
    every row, row i's CDF and draws shifted into [i, i + 1).
    """
    width = weights.shape[-1]
    if width <= FEW_CATEGORIES:
        index = np.zeros(uniform.shape, dtype=np.int64)
        for edge in cdf_edges(weights).T:  # a loop over categories, not samples
            index += uniform >= edge[:, None]
        return index
    cdf = np.cumsum(weights, -1)
    cdf /= cdf[:, -1:]
    offsets = np.arange(len(weights))[:, None]
    index = np.searchsorted((cdf + offsets).reshape(-1), (uniform + offsets).reshape(-1), "right").reshape(uniform.shape)
    return np.minimum(index - offsets * width, width - 1)


FIELDS = ("log_probs", "means", "stds")  # the arrays of a BranchedNormal, in order


@dataclass(frozen=True)
class BranchedNormal:
    """Categorical over branches, normal on x within each; shapes ``(batch, branches)``."""

    log_probs: Array
    means: Array
    stds: Array

    @property
    def num_branches(self) -> int:
        return self.log_probs.shape[-1]

    @property
    def probs(self) -> Array:
        return lib(self.log_probs).exp(self.log_probs)

    def to(self, dtype: torch.dtype) -> BranchedNormal:
        """Tensors converted to ``dtype`` (torch only)."""
        return BranchedNormal(self.log_probs.to(dtype), self.means.to(dtype), self.stds.to(dtype))

    def numpy(self) -> BranchedNormal:
        """The same distribution as float64 NumPy arrays, for the request path."""
        return BranchedNormal(to_numpy(self.log_probs), to_numpy(self.means), to_numpy(self.stds))

    @staticmethod
    def interleave(parts: list[BranchedNormal]) -> BranchedNormal:
        """Several proposals for the same observations as one batch, observation by observation.

        Row ``i * len(parts) + j`` is ``parts[j]`` at observation ``i``: the rows
        of one observation stay together, so its random draws are one block.
        """
        stack, width = lib(parts[0].means).stack, parts[0].num_branches
        return BranchedNormal(*(stack([getattr(p, f) for p in parts], 1).reshape(-1, width) for f in FIELDS))

    def flatten(self) -> BranchedNormal:
        """Stacked batches ``(..., batch, branches)`` as one batch ``(observations, branches)``."""
        return BranchedNormal(*(getattr(self, f).reshape(-1, self.num_branches) for f in FIELDS))

    def __getitem__(self, index: slice | Array | int) -> BranchedNormal:
        """Select observations (the leading batch dimension)."""
        return BranchedNormal(self.log_probs[index], self.means[index], self.stds[index])

    def at(self, branch: Array) -> tuple[Array, Array, Array]:
        """log q(b|y), mean_b and std_b at each sample's branch, each ``(batch, samples)``."""
        if isinstance(branch, np.ndarray):  # one flat index serves the three gathers
            at = flat_index(branch, self.num_branches)
            return self.log_probs.reshape(-1)[at], self.means.reshape(-1)[at], self.stds.reshape(-1)[at]
        return gather(self.log_probs, branch), gather(self.means, branch), gather(self.stds, branch)

    def log_prob(self, branch: Array, x: Array) -> Array:
        """log q(b, x | y) for samples of shape ``(batch, samples)``."""
        log_probs, means, stds = self.at(branch)
        return log_probs + normal_log_prob(x, means, stds)

    def draw(self, num_samples: int, generator: Generator) -> tuple[Array, Array]:
        """The branch and the standard-normal noise of each draw, each ``(batch, num_samples)``.

        A torch generator draws tensors, a NumPy one arrays (the branch by
        inverting q(b|y)'s CDF); x is then mean_b + std_b * noise.
        """
        if isinstance(generator, torch.Generator):
            branch = torch.multinomial(self.probs, num_samples, replacement=True, generator=generator)
            return branch, torch.randn(branch.shape, generator=generator, dtype=self.means.dtype)
        batch = self.means.shape[0]
        if self.num_branches == 1:
            branch = np.zeros((batch, num_samples), dtype=np.int64)
        else:
            branch = inverse_cdf(self.probs, generator.random((batch, num_samples)))
        return branch, generator.standard_normal((batch, num_samples))

    def sample(self, num_samples: int, generator: Generator) -> tuple[Array, Array]:
        """Draw ``(branch, x)``, each ``(batch, num_samples)``; not reparameterised."""
        branch, noise = self.draw(num_samples, generator)
        _, means, stds = self.at(branch)
        return branch, means + stds * noise

    def log_prob_in_noise(self) -> NoiseQuadratic:
        """log q(b, x) at its own draws x = mean_b + std_b * eps: log q(b) - log std_b - log sqrt(2 pi) - eps^2 / 2."""
        return NoiseQuadratic(self.log_probs - np.log(self.stds) - LOG_SQRT_2PI, np.zeros_like(self.means), np.full_like(self.means, -0.5))

    def log_prob_at_draws_of(self, proposal: BranchedNormal) -> NoiseQuadratic:
        """log of this distribution at (b, x) drawn from ``proposal`` (same branches), as quadratics in the draw's noise."""
        own = normal_log_prob_in_noise(proposal.means, proposal.stds, self.means, self.stds)
        return NoiseQuadratic(self.log_probs + own.a, own.b, own.c)

    def log_density_x(self, x: Array) -> Array:
        """log q(x | y) with branches summed out, for x of shape ``(batch, points)``."""
        per_branch = self.log_probs[:, None, :] + normal_log_prob(x[..., None], self.means[:, None, :], self.stds[:, None, :])
        return logsumexp(per_branch, -1)

    def mean_x(self) -> Array:
        return (self.probs * self.means).sum(-1)

    def std_x(self) -> Array:
        """Standard deviation of the mixture over x, by the law of total variance in centred terms.

        sum_b q(b) (std_b^2 + (mean_b - mean)^2), never E[x^2] - mean^2: that
        difference cancels catastrophically when |mean| >> std (at y = 3e8 it
        gives 0 for a posterior std of 0.7).
        """
        mean = self.mean_x()
        offsets = self.means - mean[..., None]
        return lib(mean).sqrt((self.probs * (self.stds**2 + offsets * offsets)).sum(-1))
