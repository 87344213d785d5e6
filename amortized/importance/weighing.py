"""Importance weights of a proposal's draws, and what their sums say.

Pyro's ``importance.py`` and ``ops/stats.py`` in spirit.

For draws of q(b, x | y), log w = log p(b, x, y) - log q(b, x | y). From the
weights: the evidence estimate log mean(w) with its delta-method standard
error, the ELBO (mean log weight), the effective sample size
(sum w)^2 / sum w^2, and the self-normalised weights (docs/science.md,
"Importance-weighted diagnostics"). With two proposals, the defensive
mixture of both as a third (:func:`mixture_check`). Vectorised over rows (an
observation, or an observation and proposal) and draws; the per-draw loops
are compiled (:mod:`amortized.importance.kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from amortized.compiled import compiled
from amortized.distributions import BranchedNormal, cdf_edges
from amortized.importance import kernels
from amortized.importance.noise import weight_tables
from amortized.importance.streams import RandomStream
from amortized.models import ConjugateMixtureModel

MISSED_DENSITY_RATIO = 0.01  # the missed region: where q's density is below this times the posterior's


@dataclass(frozen=True)
class WeightSummary:
    """What a set of log weights says about the evidence, per observation ``(batch,)``."""

    log_evidence: np.ndarray
    log_evidence_se: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    ess_fraction: np.ndarray
    normalised: np.ndarray  # the self-normalised weights, (batch, samples)

    def rows(self, index: slice | tuple) -> WeightSummary:
        """The summary of some rows only (an index into the leading axes)."""
        return WeightSummary(*(getattr(self, f.name)[index] for f in fields(self)))


@dataclass(frozen=True)
class Weighed:
    """Draws of a proposal and their weights, per row (an observation, or an observation and proposal)."""

    branch: np.ndarray  # (rows, samples)
    x: np.ndarray
    log_weights: np.ndarray
    summary: WeightSummary
    log_ratio: np.ndarray | None = None  # with another proposal o: log o - log q at each draw

    def rows(self, index: slice) -> Weighed:
        """Some rows only (the log ratios to another proposal are dropped)."""
        return Weighed(self.branch[index], self.x[index], self.log_weights[index], self.summary.rows(index))


@compiled
def evidence_from_sums(
    total: np.ndarray, squares: np.ndarray, shift: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(mean w), its delta-method standard error and the ESS, from sums of n weights divided by exp(shift).

    The standard error sqrt(1/ESS - 1/n) estimates the spread of the weights from
    the weights themselves: with one draw there is nothing to estimate it from,
    so it is NaN (null in JSON), never 0. Compiled (NumPy's rules for a division
    by zero: inf or NaN, no warning), so that a request pays one call for it.
    """
    ess = total * total / squares
    se = np.sqrt(np.maximum(1.0 / ess - 1.0 / n, 0.0)) if n >= 2 else np.full_like(ess, math.nan)
    log_evidence = np.log(total / n) + shift
    return log_evidence, se, ess


def summarise_weights(log_weights: np.ndarray) -> WeightSummary:
    """Evidence estimate log(mean w), its standard error, ELBO, ESS and the normalised weights.

    Per row (one exp per weight).
    """
    *rows, n = log_weights.shape
    log_weights = np.ascontiguousarray(log_weights).reshape(-1, n)
    weights, shift = kernels.shifted_rows(log_weights)
    np.exp(weights, out=weights)  # in place: less memory to stream through on the request path
    total, squares, elbo = kernels.weight_sums(weights, log_weights)  # and the weights normalised in place
    log_evidence, se, ess = evidence_from_sums(total, squares, shift, n)
    return WeightSummary(
        log_evidence.reshape(rows),
        se.reshape(rows),
        elbo.reshape(rows),
        ess.reshape(rows),
        (ess / n).reshape(rows),
        weights.reshape(*rows, n),
    )


def weigh(
    model: ConjugateMixtureModel,
    y: np.ndarray,
    proposal: BranchedNormal,
    num_samples: int,
    generator: RandomStream,
    other: BranchedNormal | None = None,
) -> Weighed:
    """Draw from ``proposal`` for each y (a row each), weigh by p(b, x, y) / q(b, x | y), and summarise.

    With ``other``, another proposal for the same rows, also log other - log
    proposal at each draw (what a mixture of the two needs). Every log
    density is a quadratic in the draw's noise
    (:class:`~amortized.importance.noise.NoiseQuadratic`): combined per (row,
    branch) by :func:`~amortized.importance.noise.weight_tables`, evaluated per
    draw by :func:`amortized.importance.kernels.evaluate_draws`.
    The draws are those ``proposal.sample(num_samples, generator)`` gives.
    """
    rows, width = proposal.means.shape
    joint, ratio = weight_tables(model, proposal, y, other)
    edges = np.ascontiguousarray(cdf_edges(proposal.probs))
    uniform = generator.random((rows, num_samples)) if width > 1 else np.empty((rows, 0))
    noise = generator.standard_normal((rows, num_samples))
    means, stds = np.ascontiguousarray(proposal.means), np.ascontiguousarray(proposal.stds)
    branch, x, terms, log_ratio, top = kernels.evaluate_draws(edges, uniform, noise, means, stds, joint, ratio)
    log_weights = terms[0]
    if len(terms) > 1:  # log-sum-exp over the prior components of a branch (the terms come shifted by top)
        log_weights = kernels.component_sums(np.exp(terms, out=terms))
        np.add(np.log(log_weights, out=log_weights), top, out=log_weights)
    return Weighed(branch, x, log_weights, summarise_weights(log_weights), log_ratio[0] if other is not None else None)


def mixture_check(log_weights: np.ndarray, log_ratio: np.ndarray) -> tuple[np.ndarray, ...]:
    """The defensive mixture (q + o) / 2 as proposal, from draws of q and of o, and the mass that q misses.

    ``log_weights`` and ``log_ratio`` are ``(2 b, n)``: rows alternate q's draws
    and o's draws of one observation, with log p(b, x, y) - log(own proposal)
    and log(the other) - log(own) at each draw. Pooling both sets against the
    mixture density is deterministic-mixture importance sampling (Owen & Zhou
    2000, "Safe and effective importance sampling"); its weights are bounded by
    twice either proposal's, so it covers what either covers.

    Returns per observation ``(b,)``: the mixture's log evidence, its
    standard error, the pooled weights' effective sample size, and the
    *missed mass*: the posterior probability of the region where q's density
    is below ``MISSED_DENSITY_RATIO`` times the posterior's (where q's
    importance weights exceed Z / ratio), self-normalised over the pooled
    draws, with its delta-method standard error. Importance weights of q alone
    cannot see that region: its draws almost never land there.
    """
    n = log_weights.shape[1]
    # With d = log o - log q, the mixture's log weight is u + log 2 - log(1 + exp(-|d|)) where
    # u = log w - max(d, 0) is within log 2 of it: the largest u of a pair of rows is a safe shift for its
    # exponentials. At o's draws q's own log weight is log p - log q = (log p - log o) - (log q - log o).
    exponents, shift = kernels.mixture_exponents(np.ascontiguousarray(log_weights), np.ascontiguousarray(log_ratio))
    bound, tails = np.exp(exponents, out=exponents)
    threshold_offset = shift - math.log(n * MISSED_DENSITY_RATIO)  # log(Z / ratio) = log(total) + this
    sums = kernels.mixture_sums(bound, tails, log_weights, log_ratio, threshold_offset)
    total, squares, missed, missed_squares = sums
    log_evidence, se, ess = evidence_from_sums(2.0 * total, 4.0 * squares, shift, 2 * n)
    return (log_evidence, se, ess, *self_normalised_share(total, squares, missed, missed_squares))


@compiled
def self_normalised_share(
    total: np.ndarray, squares: np.ndarray, part: np.ndarray, part_squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The share of the weights that some draws carry, part / total, and its delta-method standard error.

    From the sums of the weights and of their squares, over all draws and over
    those draws; NaN where the total is 0 (compiled: NumPy's rules, no warning).
    """
    share = part / total
    variance = (part_squares * (1.0 - 2.0 * share) + share * share * squares) / (total * total)
    return share, np.sqrt(np.maximum(variance, 0.0))
