"""The one representation of a posterior: discrete branches, a normal on x in each.

q(b, x | y) = q(b | y) N(x; mean_b(y), std_b(y)^2) for a batch of observations.
The branch b stands for an assignment of the model's discrete latents (for
example ``{"k": 2, "z": 0}``); models without discrete latents have one branch.
Exact posteriors use the same class, with one entry per *mixture component*;
:func:`amortized.evaluation.kl_divergences` groups components into branches
where a model marginalises a discrete choice (``gmm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2), broadcasting."""
    z = (x - mean) / std
    return -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI


def normal_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) in closed form."""
    ratio = std_p / std_q
    return 0.5 * (ratio**2 + ((mean_p - mean_q) / std_q) ** 2 - 1.0) - torch.log(ratio)


@dataclass(frozen=True)
class BranchedNormal:
    """Categorical over branches, normal on x within each; shapes ``(batch, branches)``."""

    log_probs: Tensor
    means: Tensor
    stds: Tensor

    @property
    def num_branches(self) -> int:
        return self.log_probs.shape[-1]

    @property
    def probs(self) -> Tensor:
        return self.log_probs.exp()

    def to(self, dtype: torch.dtype) -> BranchedNormal:
        return BranchedNormal(self.log_probs.to(dtype), self.means.to(dtype), self.stds.to(dtype))

    @staticmethod
    def cat(parts: list[BranchedNormal]) -> BranchedNormal:
        """Join batches of observations (same branches), to run several proposals as one."""
        return BranchedNormal(*(torch.cat([getattr(p, f) for p in parts]) for f in ("log_probs", "means", "stds")))

    def __getitem__(self, index: slice | Tensor | int) -> BranchedNormal:
        """Select observations (the leading batch dimension)."""
        return BranchedNormal(self.log_probs[index], self.means[index], self.stds[index])

    def log_prob(self, branch: Tensor, x: Tensor) -> Tensor:
        """log q(b, x | y) for samples of shape ``(batch, samples)``."""
        take = lambda t: torch.gather(t, -1, branch)  # noqa: E731
        return take(self.log_probs) + normal_log_prob(x, take(self.means), take(self.stds))

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(branch, x)``, each ``(batch, num_samples)``; not reparameterised."""
        branch = torch.multinomial(self.probs, num_samples, replacement=True, generator=generator)
        noise = torch.randn(branch.shape, generator=generator, dtype=self.means.dtype)
        x = torch.gather(self.means, -1, branch) + torch.gather(self.stds, -1, branch) * noise
        return branch, x

    def log_density_x(self, x: Tensor) -> Tensor:
        """log q(x | y) with branches summed out, for x of shape ``(batch, points)``."""
        per_branch = self.log_probs[:, None, :] + normal_log_prob(
            x[..., None], self.means[:, None, :], self.stds[:, None, :]
        )
        return torch.logsumexp(per_branch, dim=-1)

    def mean_x(self) -> Tensor:
        return (self.probs * self.means).sum(-1)

    def std_x(self) -> Tensor:
        """Standard deviation of the mixture over x (law of total variance)."""
        mean = self.mean_x()
        second = (self.probs * (self.stds**2 + self.means**2)).sum(-1)
        return (second - mean**2).clamp_min(0.0).sqrt()
