"""Pareto smoothed importance sampling diagnostics: k-hat, and the sample size it needs.

The shape k of a generalised Pareto fitted to the largest importance weights
says how heavy their tail is, and so whether importance estimates can be
trusted: below 0.5 good, 0.5 to 0.7 usable with enough draws, above 0.7 not
(Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed importance
sampling", JMLR 25(72)). The fit is Zhang & Stephens' (2009, "A new and
efficient estimation method for the generalized Pareto distribution",
Technometrics 51(3)) with the weak prior towards 0.5 that arviz-stats adds,
vectorised over rows; the tests hold it to arviz-stats' ``psislw``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from amortized.arrays import logsumexp
from amortized.importance import kernels


def pareto_tail_size(num_samples: int) -> int:
    """How many of the largest weights the Pareto fit uses (as arviz-stats: 3 sqrt(N), or N/5 when small)."""
    return int(math.floor(3 * math.sqrt(num_samples))) if num_samples > 225 else num_samples // 5


@functools.lru_cache(maxsize=64)
def zhang_stephens_grid(n: int) -> tuple[np.ndarray, int]:
    """The profile grid of Zhang & Stephens' fit for a tail of n draws, and the index of its first quartile."""
    m_est = 30 + int(n**0.5)
    grid = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1) - 0.5))
    grid.flags.writeable = False
    return grid, int(n / 4 + 0.5) - 1


def pareto_k_hat(log_weights: np.ndarray) -> np.ndarray:
    """PSIS k-hat per row: generalised Pareto shape of the largest weights (Zhang & Stephens fit).

    The same estimator as arviz-stats' ``psislw`` (with its weak prior towards
    0.5), vectorised over rows; NaN where the tail cannot be fitted (fewer than
    5 tail draws, or all tail weights equal).
    """
    n = pareto_tail_size(log_weights.shape[-1])
    if n < 5:
        return np.full(log_weights.shape[:-1], math.nan)
    size = log_weights.shape[-1]
    # ascending; the first is the cutoff
    top = np.sort(np.partition(log_weights, size - n - 1, -1)[..., size - n - 1 :], -1)
    shifted = top - top[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = np.exp(shifted[..., 1:]) - np.exp(shifted[..., :1])  # exceedances, ascending
        prior_bs, prior_k = 3.0, 10.0
        grid, quartile = zhang_stephens_grid(n)
        b = grid / (prior_bs * tail[..., quartile : quartile + 1]) + 1 / tail[..., -1:]
        terms = kernels.one_minus_outer(b.reshape(-1, b.shape[-1]), tail.reshape(-1, tail.shape[-1]))
        # log(1 - b x), not log1p: NumPy's log is SIMD, log1p is not (3x)
        k = np.log(terms, out=terms).sum(-1).reshape(b.shape) / tail.shape[-1]
        profile = n * (np.log(-b / k) - k - 1)
        weights = np.exp(profile - logsumexp(profile)[..., None])
        weights = np.where(weights >= 10 * np.finfo(np.float64).eps, weights, 0.0)
        b_post = (b * weights).sum(-1) / weights.sum(-1)
        k_post = np.log1p(-b_post[..., None] * tail).mean(-1)
    return (n * k_post + prior_k * 0.5) / (n + prior_k)


def required_samples(k: float) -> float:
    """The fewest draws for which a Pareto-smoothed estimate with tail shape ``k`` is reliable: 10^(1 / (1 - k)).

    Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25, sec. 3.2.2; infinite for k >= 1.
    """
    return math.inf if k >= 1 else 10 ** (1 / (1 - k))
