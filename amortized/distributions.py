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

import numpy as np
import torch

from amortized.arrays import Array, flat_index, gather, lib, logsumexp, to_numpy
from amortized.compiled import compiled

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
Generator = torch.Generator | np.random.Generator


def normal_log_prob(x: Array, mean: Array, std: Array) -> Array:
    """log N(x; mean, std^2), broadcasting."""
    z = (x - mean) / std
    return -0.5 * z * z - lib(std).log(std) - LOG_SQRT_2PI


FEW_CATEGORIES = 16  # up to this many, counting the CDF edges below each draw beats a binary search


def cdf_edges(weights: np.ndarray) -> np.ndarray:
    """Per row, the normalised CDF of ``weights`` below each category but the first.

    A uniform at or past ``edges[i]`` falls in category i + 1 or later.
    """
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
    index = np.searchsorted((cdf + offsets).reshape(-1), (uniform + offsets).reshape(-1), "right").reshape(
        uniform.shape
    )
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

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log_probs, means, stds) as C-ordered float64 NumPy arrays: what the compiled passes take."""
        return tuple(np.ascontiguousarray(getattr(self, f), dtype=np.float64) for f in FIELDS)  # type: ignore[return-value]

    def numpy(self) -> BranchedNormal:
        """The same distribution as float64 NumPy arrays, for the request path."""
        return BranchedNormal(to_numpy(self.log_probs), to_numpy(self.means), to_numpy(self.stds))

    @staticmethod
    def interleave(parts: list[BranchedNormal]) -> BranchedNormal:
        """Several proposals for the same observations as one batch, observation by observation.

        Row ``i * len(parts) + j`` is ``parts[j]`` at observation ``i``: the rows
        of one observation stay together, so its random draws are one block.
        """
        # side by side along the branches, then each observation's row split in one per part (cheaper than stack)
        concatenate, width = lib(parts[0].means).concatenate, parts[0].num_branches
        return BranchedNormal(*(concatenate([getattr(p, f) for p in parts], -1).reshape(-1, width) for f in FIELDS))

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
        branch: Array
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

    def log_density_x(self, x: Array) -> Array:
        """log q(x | y) with branches summed out, for x of shape ``(batch, points)``."""
        per_branch = self.log_probs[:, None, :] + normal_log_prob(
            x[..., None], self.means[:, None, :], self.stds[:, None, :]
        )
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

    def moments(self) -> tuple[Array, Array]:
        """:meth:`mean_x` and :meth:`std_x` together; NumPy ``(batch, branches)`` arrays in one compiled pass.

        The same sums in the same order (:func:`mixture_moments`); on the request path the NumPy expressions
        were a dozen calls on arrays of a few numbers.
        """
        if isinstance(self.means, np.ndarray) and self.means.ndim == 2:
            return mixture_moments(*self.arrays())
        return self.mean_x(), self.std_x()


@compiled
def mixture_moments(log_probs: np.ndarray, means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``(rows, branches)``: the mixture's mean sum_b q_b mu_b and std (:meth:`BranchedNormal.std_x`)."""
    rows, branches = means.shape
    mean, std = np.empty(rows), np.empty(rows)
    for r in range(rows):
        m = 0.0
        for b in range(branches):
            term = math.exp(log_probs[r, b]) * means[r, b]
            m = m + term if b else term
        spread = 0.0
        for b in range(branches):
            offset = means[r, b] - m
            term = math.exp(log_probs[r, b]) * (stds[r, b] * stds[r, b] + offset * offset)
            spread = spread + term if b else term
        mean[r], std[r] = m, math.sqrt(spread)
    return mean, std
