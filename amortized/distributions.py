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


def inverse_cdf(weights: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Per row, the index whose cumulative normalised weight first exceeds each uniform draw.

    One ``searchsorted`` for every row: row i's CDF and draws are shifted into [i, i + 1).
    """
    cdf = np.cumsum(weights, -1)
    cdf /= cdf[:, -1:]
    offsets = np.arange(len(weights))[:, None]
    index = np.searchsorted((cdf + offsets).reshape(-1), (uniform + offsets).reshape(-1), "right").reshape(uniform.shape)
    return np.minimum(index - offsets * weights.shape[-1], weights.shape[-1] - 1)


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
    def cat(parts: list[BranchedNormal]) -> BranchedNormal:
        """Join batches of observations (same branches), to run several proposals as one."""
        join = lib(parts[0].means).concatenate
        return BranchedNormal(*(join([getattr(p, f) for p in parts]) for f in ("log_probs", "means", "stds")))

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

    def sample(self, num_samples: int, generator: Generator) -> tuple[Array, Array]:
        """Draw ``(branch, x)``, each ``(batch, num_samples)``; not reparameterised.

        A torch generator draws tensors, a NumPy one arrays: the branch by
        inverting q(b|y)'s CDF, then x = mean_b + std_b * standard normal.
        """
        if isinstance(generator, torch.Generator):
            branch = torch.multinomial(self.probs, num_samples, replacement=True, generator=generator)
            noise = torch.randn(branch.shape, generator=generator, dtype=self.means.dtype)
        else:
            batch = self.means.shape[0]
            if self.num_branches == 1:
                branch = np.zeros((batch, num_samples), dtype=np.int64)
            else:
                branch = inverse_cdf(self.probs, generator.random((batch, num_samples)))
            noise = generator.standard_normal((batch, num_samples))
        _, means, stds = self.at(branch)
        return branch, means + stds * noise

    def log_density_x(self, x: Array) -> Array:
        """log q(x | y) with branches summed out, for x of shape ``(batch, points)``."""
        per_branch = self.log_probs[:, None, :] + normal_log_prob(x[..., None], self.means[:, None, :], self.stds[:, None, :])
        return logsumexp(per_branch, -1)

    def mean_x(self) -> Array:
        return (self.probs * self.means).sum(-1)

    def std_x(self) -> Array:
        """Standard deviation of the mixture over x (law of total variance)."""
        mean = self.mean_x()
        second = (self.probs * (self.stds**2 + self.means**2)).sum(-1)
        return lib(second).sqrt(lib(second).clip(second - mean**2, 0.0, None))
