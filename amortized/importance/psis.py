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

from amortized.compiled import compiled
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
    """PSIS k-hat per row ``(..., samples) -> (...)``: generalised Pareto shape of the largest weights.

    The same estimator as arviz-stats' ``psislw`` (Zhang & Stephens' fit with
    its weak prior towards 0.5), vectorised over rows; NaN where the tail
    cannot be fitted (fewer than 5 tail draws, or all tail weights equal). Two
    compiled passes per row around one SIMD ``log`` of the profile grid
    (:func:`pareto_profile`, :func:`pareto_shape`): on the request path a
    micro-batch's k-hats were about twenty NumPy calls on small arrays.
    """
    size = log_weights.shape[-1]
    n = pareto_tail_size(size)
    if n < 5:
        return np.full(log_weights.shape[:-1], math.nan)
    grid, quartile = zhang_stephens_grid(n)
    top = np.sort(np.partition(log_weights, size - n - 1, -1)[..., size - n - 1 :], -1)  # ascending; [0]: cutoff
    b, tail, terms = pareto_profile(top.reshape(-1, n + 1), grid, quartile)
    # log(1 - b x), not log1p: NumPy's log is SIMD, log1p is not (3x); summed over the tail in pareto_shape
    return pareto_shape(np.log(terms, out=terms), b, tail).reshape(log_weights.shape[:-1])


PRIOR_BS, PRIOR_K = 3.0, 10.0  # arviz-stats' weak prior: on the profile grid's scale, and k's pull towards 0.5


@compiled
def pareto_profile(top: np.ndarray, grid: np.ndarray, quartile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``top`` ``(rows, n + 1)``: the tail and Zhang & Stephens' profile grid for its fit.

    ``top`` holds a row's largest n + 1 log weights, ascending; the first is
    the cutoff. Returns ``b`` ``(rows, m)``: the grid
    (:func:`zhang_stephens_grid`) scaled by the tail's first quartile and its
    largest exceedance; ``tail`` ``(rows, n)``: the exceedances over the
    cutoff, exp(top) - exp(cutoff), ascending; and ``terms`` ``(rows, m, n)``:
    1 - b_i x_j, whose logs (taken by NumPy) give each grid point's shape.
    """
    rows, n, m = top.shape[0], top.shape[1] - 1, grid.shape[0]
    b, tail, terms = np.empty((rows, m)), np.empty((rows, n)), np.empty((rows, m, n))
    for r in range(rows):
        largest = top[r, n]
        cutoff = math.exp(top[r, 0] - largest)
        for j in range(n):
            tail[r, j] = math.exp(top[r, j + 1] - largest) - cutoff
        for i in range(m):
            b[r, i] = grid[i] / (PRIOR_BS * tail[r, quartile]) + 1 / tail[r, n - 1]
            for j in range(n):
                terms[r, i, j] = 1.0 - b[r, i] * tail[r, j]
    return b, tail, terms


@compiled
def pareto_shape(log_terms: np.ndarray, b: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """k-hat per row from the profile of :func:`pareto_profile`: ``log_terms`` ``(rows, m, n)`` = log(1 - b_i x_j).

    Each grid point's shape k_i = mean_j log(1 - b_i x_j) and profile
    log-likelihood n (log(-b_i / k_i) - k_i - 1); their softmax weighs the
    grid into the posterior mean of b (weights under 10 machine epsilons
    dropped), whose shape mean_j log1p(-b x_j) is pulled towards 0.5 by the
    prior: (n k + 10 * 0.5) / (n + 10).
    """
    rows, m, n = log_terms.shape
    out, profile = np.empty(rows), np.empty(m)
    floor = 10 * np.finfo(np.float64).eps
    for r in range(rows):
        largest = -np.inf
        for i in range(m):
            k = kernels.four_lane_sum(log_terms[r, i]) / n
            profile[i] = n * (math.log(-b[r, i] / k) - k - 1)
            largest = profile[i] if i == 0 else kernels.nan_max(profile[i], largest)
        shift = kernels.finite_or_zero(largest)
        normaliser = 0.0
        for i in range(m):
            normaliser += math.exp(profile[i] - shift)
        log_normaliser = math.log(normaliser) + shift
        weighted, weights = 0.0, 0.0
        for i in range(m):
            w = math.exp(profile[i] - log_normaliser)
            w = w if w >= floor else 0.0
            weighted += b[r, i] * w
            weights += w
        b_post = weighted / weights
        k_post = 0.0
        for j in range(n):
            k_post += math.log1p(-b_post * tail[r, j])
        k_post /= n
        out[r] = (n * k_post + PRIOR_K * 0.5) / (n + PRIOR_K)
    return out


def required_samples(k: float) -> float:
    """The fewest draws for which a Pareto-smoothed estimate with tail shape ``k`` is reliable: 10^(1 / (1 - k)).

    Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25, sec. 3.2.2; infinite for k >= 1.
    """
    return math.inf if k >= 1 else 10 ** (1 / (1 - k))
