"""Posterior summaries of x: quantiles and central credible intervals, from a distribution or from weighted draws.

Two sources, one meaning: the ``levels``-quantiles of the x-marginal.

- :func:`mixture_quantiles`: of a :class:`~amortized.distributions.BranchedNormal`
  (q(x | y), or the exact posterior, branches or mixture components summed out),
  by inverting the mixture's CDF, sum_b p_b Phi((x - mean_b) / std_b), with
  safeguarded Newton steps inside a bisection bracket, compiled with numba and
  looping over observations and levels (the standard normal CDF is
  ``erfc``-based, so tails keep their relative precision).
- :func:`weighted_quantiles`: of importance-weighted draws, the inverse of the
  weighted empirical CDF (Hyndman and Fan 1996, "Sample quantiles in
  statistical packages", definition 1, with weights: the smallest draw whose
  normalised cumulative weight reaches the level), which is what
  ``numpy.quantile(..., weights=w, method="inverted_cdf")`` computes for one row;
  here vectorised over rows.

A central credible interval of level a is [quantile((1 - a) / 2), quantile((1 + a) / 2)]
(:func:`amortized.calibration.central_bounds` lists those levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from amortized.compiled import compiled
from amortized.distributions import BranchedNormal

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # the quantile levels of an answer's summary
# the levels of its central credible intervals: those the quantiles do not already give (the 50% interval is the
# quartiles [q 0.25, q 0.75], the 90% one [q 0.05, q 0.95]); an answer carries each number once
INTERVALS = (0.8, 0.95)
BRACKET_STDS = 40.0  # every branch's CDF is 0 or 1 to float64 precision this many standard deviations out
MAX_STEPS = 200  # Newton steps fall back to halvings, and 64 halvings reach the float64 grid from any bracket


def central_bounds(levels: Sequence[float]) -> list[float]:
    """The quantile levels of the central intervals: (1 - a)/2 for each a, then (1 + a)/2 for each a."""
    return [(1 - a) / 2 for a in levels] + [(1 + a) / 2 for a in levels]


SUMMARY_LEVELS = (*QUANTILES, *central_bounds(INTERVALS))  # every level a summary needs, computed in one call


@compiled
def _invert_mixture_cdf(
    probs: np.ndarray, means: np.ndarray, stds: np.ndarray, levels: np.ndarray, normal_quantiles: np.ndarray
) -> np.ndarray:
    rows, branches = means.shape
    out = np.empty((rows, len(levels)))
    for r in range(rows):
        low, high, finite, mean, second, scale = math.inf, -math.inf, True, 0.0, 0.0, math.inf
        for b in range(branches):
            if not (math.isfinite(means[r, b]) and math.isfinite(stds[r, b]) and stds[r, b] > 0):
                finite = False
            low = min(low, means[r, b] - BRACKET_STDS * stds[r, b])
            high = max(high, means[r, b] + BRACKET_STDS * stds[r, b])
            mean += probs[r, b] * means[r, b]
            scale = min(scale, stds[r, b])
        for b in range(branches):
            second += probs[r, b] * (stds[r, b] ** 2 + (means[r, b] - mean) ** 2)
        for j in range(len(levels)):
            p = levels[j]
            if not finite or not math.isfinite(p) or p < 0 or p > 1:
                out[r, j] = math.nan
                continue
            lo, hi = low, high
            if 0 < p < 1:  # F(x) = sum_b p_b Phi_b(x) is at most p below every branch's p-quantile, at least p above
                lo, hi = math.inf, -math.inf
                for b in range(branches):
                    lo = min(lo, means[r, b] + stds[r, b] * normal_quantiles[j])
                    hi = max(hi, means[r, b] + stds[r, b] * normal_quantiles[j])
            # start at the moment-matched normal's quantile: a few Newton steps from there for most mixtures
            x = min(max(mean + math.sqrt(second) * normal_quantiles[j], lo), hi)
            for _ in range(MAX_STEPS):
                cdf, density = 0.0, 0.0
                for b in range(branches):
                    z = (x - means[r, b]) / stds[r, b]
                    cdf += probs[r, b] * 0.5 * math.erfc(-z / math.sqrt(2.0))
                    density += probs[r, b] * math.exp(-0.5 * z * z) / (stds[r, b] * math.sqrt(2.0 * math.pi))
                if cdf == p:
                    break
                if cdf < p:
                    lo = x
                else:
                    hi = x
                step = x - (cdf - p) / density if density > 0 else math.nan
                following = step if lo <= step <= hi else 0.5 * (lo + hi)
                if abs(following - x) <= 1e-15 * (abs(x) + scale) or hi - lo <= 4e-16 * max(abs(lo), abs(hi)):
                    x = following
                    break
                x = following
            out[r, j] = x
    return out


def mixture_quantiles(dist: BranchedNormal, levels: Sequence[float]) -> np.ndarray:
    """The ``levels``-quantiles of the x-marginal of ``dist``, shape ``(observations, len(levels))``.

    ``dist`` holds NumPy (or torch) arrays ``(observations, branches)``; a level
    outside [0, 1] or a row with a non-finite or non-positive std gives NaN.
    The CDF is increasing, so each quantile lies between the smallest and the
    largest of the branches' own quantiles at that level (every branch's +-40
    standard deviations for levels 0 and 1). The search starts at the quantile of the
    normal with the mixture's mean and variance; a Newton step is taken where
    it stays inside the current bracket, else the bracket is halved, until the
    step falls below 1e-15 of the scale or the bracket reaches the float64 grid.
    """
    probs, means, stds = (
        np.ascontiguousarray(np.asarray(a, dtype=np.float64)) for a in (dist.probs, dist.means, dist.stds)
    )
    normal = NormalDist()
    start = [normal.inv_cdf(p) if 0 < p < 1 else 0.0 for p in levels]
    return _invert_mixture_cdf(probs, means, stds, np.asarray(levels, dtype=np.float64), np.asarray(start))


def weighted_quantiles(x: np.ndarray, log_weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per row, the ``levels``-quantiles of draws ``x`` weighted by ``exp(log_weights)``, ``(rows, len(levels))``.

    ``x`` and ``log_weights`` are ``(rows, draws)``. The inverse of the weighted
    empirical CDF (Hyndman and Fan's definition 1 with weights, as
    ``numpy.quantile(x[i], levels, weights=w[i], method="inverted_cdf")``): the
    draws sorted, their weights' running sums normalised by the total, and the
    first draw whose running sum reaches each level. Rows whose weights are not
    all finite (or all zero) give NaN. The loop runs over levels, never draws.
    """
    x, log_weights = np.asarray(x, dtype=np.float64), np.asarray(log_weights, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    ordered = np.take_along_axis(x, order, -1)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp(log_weights - log_weights.max(-1, keepdims=True))
        cdf = np.cumsum(np.take_along_axis(weights, order, -1), -1)
        cdf /= cdf[:, -1:]
    usable = np.isfinite(cdf[:, -1])
    out = np.empty((len(x), len(levels)))
    last = x.shape[-1] - 1
    for j, level in enumerate(levels):  # a loop over levels
        index = np.minimum((cdf < level).sum(-1), last)
        out[:, j] = np.take_along_axis(ordered, index[:, None], -1)[:, 0]
    out[~usable] = np.nan
    return out
