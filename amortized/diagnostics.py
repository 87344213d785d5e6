"""Importance-weighted diagnostics of one answer q(.|y): how far to trust it, per query.

Draw N samples of q, weigh them by w = p(latents, y) / q(latents | y), and
read off the evidence estimate, ESS, PSIS k-hat and self-normalised posterior
summaries (MODELS.md, "Importance-weighted diagnostics"). Two honest caveats
shape the verdict:

- Importance weights cannot see a mode that q misses (a mode-seeking ``qp``
  network on ``gmm`` looks perfect by ESS and k-hat). So, when another
  compiled network is at hand, the evidence is estimated again with it and
  with the defensive mixture of both as proposal; disagreement beyond the
  standard errors is flagged.
- When q is nearly exact the weights are nearly uniform and the Pareto fit to
  their tail is noise; a high k-hat there is not a warning.

Everything is vectorised over observations (batch) and samples: NumPy for
what is per observation, compiled loops (:mod:`amortized.kernels`) for what
is per draw. This is the request path, where torch's fixed cost per call
would dominate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from amortized import kernels
from amortized.arrays import finite_or_zero, gather, logsumexp
from amortized.distributions import BranchedNormal, cdf_edges, inverse_cdf
from amortized.evaluation import kl_divergences
from amortized.models import ConjugateMixtureModel

GOOD_K, USABLE_K = 0.5, 0.7  # k-hat thresholds of MODELS.md (Vehtari et al.)
NEARLY_UNIFORM_ESS = 0.9  # at or above this ESS/N the weights are nearly uniform and k-hat is ignored
AGREEMENT_Z = 3.0  # evidence estimates agree within this many combined standard errors ...
AGREEMENT_FLOOR = 1e-3  # ... plus this many nats, so that exact proposals never disagree by rounding
# Per query, the KLs that need quadrature (gmm) integrate under q's normals on +-8 sd with 301 points, not
# the scoring grid's +-12 sd with 801: within 3.4e-5 of a 4001-point reference over y in [-40, 40] (the
# tests hold it within 2e-4 of the scoring grid).
REQUEST_KL_GRID = np.linspace(-8.0, 8.0, 301)


@dataclass(frozen=True)
class WeightSummary:
    """What a set of log weights says about the evidence, per observation ``(batch,)``."""

    log_evidence: np.ndarray
    log_evidence_se: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    ess_fraction: np.ndarray
    normalised: np.ndarray | None = None  # the self-normalised weights, (batch, samples)

    def rows(self, index: slice | tuple) -> WeightSummary:
        """The summary of some rows only (an index into the leading axes)."""
        values = (getattr(self, f.name) for f in fields(self))
        return WeightSummary(*(None if v is None else v[index] for v in values))


@dataclass(frozen=True)
class CrossCheck:
    """The evidence again, from the other compiled network and from the mixture of both."""

    log_evidence_other: np.ndarray
    log_evidence_other_se: np.ndarray
    log_evidence_mixture: np.ndarray
    log_evidence_mixture_se: np.ndarray
    consistent: np.ndarray  # all three estimates agree within their errors
    misses_mass: np.ndarray  # this q's estimate falls below the mixture's: it misses posterior mass


class MixtureSums(NamedTuple):
    """Per row: sum and sum of squares of the mixture's importance weights, each weight divided by exp(shift)."""

    total: np.ndarray
    squares: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class Weighed:
    """Draws of a proposal and their weights, per row (an observation, or an observation and proposal)."""

    branch: np.ndarray  # (rows, samples)
    x: np.ndarray
    log_weights: np.ndarray
    summary: WeightSummary
    mixture: MixtureSums | None = None  # with another proposal: the sums its mixture with this one needs

    def rows(self, index: slice) -> Weighed:
        """Some rows only (the mixture's sums, which pair rows, are dropped)."""
        return Weighed(self.branch[index], self.x[index], self.log_weights[index], self.summary.rows(index))


@dataclass(frozen=True)
class PosteriorAnalysis:
    """Samples of q, their log weights, and every per-query diagnostic; leading dimension = observations."""

    branch: np.ndarray
    x: np.ndarray
    log_weights: np.ndarray
    log_evidence: np.ndarray
    log_evidence_se: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    ess_fraction: np.ndarray
    pareto_k: np.ndarray
    mean_x: np.ndarray
    std_x: np.ndarray
    branch_probabilities: np.ndarray
    verdict: list[str]
    reason: list[str]
    cross_check: CrossCheck | None = None
    resampled_branch: np.ndarray | None = None
    resampled_x: np.ndarray | None = None


def evidence_from_sums(total: np.ndarray, squares: np.ndarray, shift: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(mean w), its delta-method standard error and the ESS, from sums of n weights divided by exp(shift)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = total * total / squares
        se = np.sqrt(np.maximum(1.0 / ess - 1.0 / n, 0.0))
        log_evidence = np.log(total / n) + shift
    return log_evidence, se, ess


def summarise_weights(log_weights: np.ndarray) -> WeightSummary:
    """Evidence estimate log(mean w), its standard error, ELBO, ESS and the normalised weights, per row (one exp per weight)."""
    *rows, n = log_weights.shape
    log_weights = np.ascontiguousarray(log_weights).reshape(-1, n)
    shift = finite_or_zero(log_weights.max(-1))
    weights = np.subtract(log_weights, shift[:, None])
    np.exp(weights, out=weights)  # in place: less memory to stream through on the request path
    total, squares, elbo = kernels.weight_sums(weights, log_weights)  # normalises the weights
    log_evidence, se, ess = evidence_from_sums(total, squares, shift, n)
    values = (log_evidence, se, elbo, ess, ess / n)
    return WeightSummary(*(v.reshape(rows) for v in values), weights.reshape(*rows, n))


def weigh(
    model: ConjugateMixtureModel, y: np.ndarray, proposal: BranchedNormal, num_samples: int,
    generator: np.random.Generator, other: BranchedNormal | None = None,
) -> Weighed:
    """Draw from ``proposal`` for each y (a row each), weigh by p(b, x, y) / q(b, x | y), and summarise.

    With ``other``, another proposal for the same rows, also the sums that the
    mixture (proposal + other) / 2 needs as proposal at these draws. Every log
    density is a quadratic in the draw's noise
    (:class:`~amortized.distributions.NoiseQuadratic`): combined per (row,
    branch) here, evaluated per draw by :func:`amortized.kernels.evaluate_draws`.
    The draws are those ``proposal.sample(num_samples, generator)`` gives.
    """
    rows, width = proposal.means.shape
    own = proposal.log_prob_in_noise()
    joint = (model.log_joint_in_noise(proposal, y) - own).table()
    ratio = (other.log_prob_at_draws_of(proposal) - own).table() if other is not None else np.empty((0, rows, width, 3))
    edges = np.ascontiguousarray(cdf_edges(proposal.probs))
    uniform = generator.random((rows, num_samples)) if width > 1 else np.empty((rows, 0))
    noise = generator.standard_normal((rows, num_samples))
    means, stds = np.ascontiguousarray(proposal.means), np.ascontiguousarray(proposal.stds)
    branch, x, terms, log_ratio = kernels.evaluate_draws(edges, uniform, noise, means, stds, joint, ratio)
    log_weights = terms[0] if len(terms) == 1 else logsumexp(terms, 0, scratch=True)  # prior components of a branch
    summary = summarise_weights(log_weights)
    mixture = None
    if other is not None:
        # With d = log other - log q, the mixture's log weight is u + log 2 - log(1 + exp(-|d|)) where
        # u = log w - max(d, 0) is within log 2 of it: the largest u is a safe shift for its exponentials.
        d = log_ratio[0]
        bound = np.subtract(log_weights, np.maximum(d, 0.0))
        shift = finite_or_zero(bound.max(-1))
        bound -= shift[:, None]  # scratch arrays from here: exponentials in place
        np.exp(bound, out=bound)
        np.exp(np.negative(np.abs(d, out=d), out=d), out=d)
        total, squares = kernels.mixture_sums(bound, d)
        mixture = MixtureSums(2.0 * total, 4.0 * squares, shift)
    return Weighed(branch, x, log_weights, summary, mixture)


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
    top = np.sort(np.partition(log_weights, size - n - 1, -1)[..., size - n - 1 :], -1)  # ascending; the first is the cutoff
    shifted = top - top[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = np.exp(shifted[..., 1:]) - np.exp(shifted[..., :1])  # exceedances, ascending
        prior_bs, prior_k = 3.0, 10.0
        grid, quartile = zhang_stephens_grid(n)
        b = grid / (prior_bs * tail[..., quartile : quartile + 1]) + 1 / tail[..., -1:]
        terms = np.einsum("...i,...j->...ij", b, tail)  # b x for every pair: einsum's outer product is 2x faster here
        np.subtract(1.0, terms, out=terms)  # log(1 - b x), not log1p: NumPy's log is SIMD, log1p is not (3x)
        k = np.log(terms, out=terms).sum(-1) / tail.shape[-1]
        profile = n * (np.log(-b / k) - k - 1)
        weights = np.exp(profile - logsumexp(profile)[..., None])
        weights = np.where(weights >= 10 * np.finfo(np.float64).eps, weights, 0.0)
        b_post = (b * weights).sum(-1) / weights.sum(-1)
        k_post = np.log1p(-b_post[..., None] * tail).mean(-1)
    return (n * k_post + prior_k * 0.5) / (n + prior_k)


def verdict(summary: WeightSummary, pareto_k: np.ndarray, misses_mass: np.ndarray | None) -> tuple[list[str], list[str]]:
    """A plain verdict per observation: "reliable", "usable" or "unreliable", with the reason."""
    verdicts, reasons = [], []
    missing = misses_mass.tolist() if misses_mass is not None else [False] * len(pareto_k)
    for ess_fraction, k, log_z, misses in zip(summary.ess_fraction.tolist(), pareto_k.tolist(), summary.log_evidence.tolist(), missing):
        if not math.isfinite(log_z) or not math.isfinite(ess_fraction):
            verdicts.append("unreliable")
            reasons.append("the importance weights are not finite numbers")
            continue
        if ess_fraction >= NEARLY_UNIFORM_ESS:
            level, why = "reliable", f"weights are nearly uniform (ESS/N = {ess_fraction:.3f}); k-hat is not informative there"
        elif not math.isfinite(k) or k > USABLE_K:
            level, why = "unreliable", f"heavy-tailed weights (k-hat = {k:.2f} > {USABLE_K}, ESS/N = {ess_fraction:.3f})"
        elif k > GOOD_K:
            level, why = "usable", f"k-hat = {k:.2f} is between {GOOD_K} and {USABLE_K}: estimates are noisy"
        else:
            level, why = "reliable", f"k-hat = {k:.2f} < {GOOD_K}"
        if misses:
            level = "unreliable"
            why += "; but the evidence estimated with the other compiled network and the mixture of both is higher: q misses posterior mass"
        verdicts.append(level)
        reasons.append(why)
    return verdicts, reasons


def cross_check(
    model: ConjugateMixtureModel, y: np.ndarray, q: BranchedNormal, other: BranchedNormal, num_samples: int,
    generator: np.random.Generator,
) -> tuple[Weighed, CrossCheck]:
    """Sample q and ``other`` as one batch; evidence from each and from their mixture (q + other)/2.

    Returns q's draws and what they say, with the cross-check. The mixture
    estimate pools both sample sets and weighs them against the mixture
    density (deterministic-mixture importance sampling). Rows are interleaved
    (q, other) per observation, so the draws of one observation are
    contiguous whatever else is in the batch.
    """
    b = len(y)
    both = weigh(model, np.repeat(y, 2), BranchedNormal.interleave([q, other]), num_samples, generator, BranchedNormal.interleave([other, q]))
    summary, (total, squares, shift) = both.summary, (v.reshape(b, 2) for v in both.mixture)
    pooled_shift = shift.max(-1)
    scale = np.exp(shift - pooled_shift[:, None])
    mixture_evidence, mixture_se, _ = evidence_from_sums((total * scale).sum(-1), (squares * scale * scale).sum(-1), pooled_shift, 2 * num_samples)
    estimates = np.array([summary.log_evidence[0::2], summary.log_evidence[1::2], mixture_evidence])
    errors = np.array([summary.log_evidence_se[0::2], summary.log_evidence_se[1::2], mixture_se])
    gaps = np.abs(estimates[:, None] - estimates[None, :])
    allowed = AGREEMENT_Z * np.sqrt(errors[:, None] ** 2 + errors[None, :] ** 2) + AGREEMENT_FLOOR
    with np.errstate(invalid="ignore"):
        consistent = (gaps <= allowed).reshape(9, b).all(0)  # NaN compares False: never "consistent"
        # A proposal that misses mass underestimates the evidence; the mixture covers what either covers.
        misses_mass = ~(estimates[0] >= estimates[2] - allowed[0, 2])
    return both.rows(slice(0, None, 2)), CrossCheck(estimates[1], errors[1], estimates[2], errors[2], consistent, misses_mass)


def analyse(
    model: ConjugateMixtureModel,
    y: np.ndarray,
    q: BranchedNormal,
    num_samples: int,
    generator: np.random.Generator,
    other: BranchedNormal | None = None,
    resample: bool = False,
) -> PosteriorAnalysis:
    """Sample q for each y, weigh, diagnose; optionally cross-check with ``other`` and resample (SIR).

    ``y`` and the proposals are NumPy arrays (``BranchedNormal.numpy()``).
    """
    if other is None:
        weighed, check = weigh(model, y, q, num_samples, generator), None
    else:
        weighed, check = cross_check(model, y, q, other, num_samples, generator)
    summary = weighed.summary
    mean_x, std_x, branch_probabilities = kernels.weighted_moments(summary.normalised, weighed.x, weighed.branch, q.num_branches)
    pareto_k = pareto_k_hat(weighed.log_weights)
    verdicts, reasons = verdict(summary, pareto_k, None if check is None else check.misses_mass)
    resampled_branch = resampled_x = None
    if resample:
        finite = np.where(np.isfinite(summary.normalised), summary.normalised, 0.0)
        finite = np.where(finite.sum(-1, keepdims=True) > 0, finite, 1.0)  # uniform if every weight failed
        picks = inverse_cdf(finite, generator.random((len(y), num_samples)))
        resampled_branch, resampled_x = gather(weighed.branch, picks), gather(weighed.x, picks)
    return PosteriorAnalysis(
        branch=weighed.branch,
        x=weighed.x,
        log_weights=weighed.log_weights,
        log_evidence=summary.log_evidence,
        log_evidence_se=summary.log_evidence_se,
        elbo=summary.elbo,
        ess=summary.ess,
        ess_fraction=summary.ess_fraction,
        pareto_k=pareto_k,
        mean_x=mean_x,
        std_x=std_x,
        branch_probabilities=branch_probabilities,
        verdict=verdicts,
        reason=reasons,
        cross_check=check,
        resampled_branch=resampled_branch,
        resampled_x=resampled_x,
    )


def latent_marginals(model: ConjugateMixtureModel, branch_probabilities: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """P(latent = value | y) for each discrete latent, from branch probabilities ``(batch, branches)``."""
    return {
        name: {value: branch_probabilities @ member.numpy().astype(np.float64) for value, member in values.items()}
        for name, values in model.latent_value_members.items()
    }


def exact_summary(
    model: ConjugateMixtureModel, truth: tuple[BranchedNormal, np.ndarray], q: BranchedNormal
) -> dict[str, np.ndarray]:
    """The truth for each y (``model.exact_posterior_and_evidence(y)``), and how far this q is from it."""
    exact, log_evidence = truth
    kl_pq, kl_qp = kl_divergences(model, exact, q, REQUEST_KL_GRID)
    return {
        "log_evidence": log_evidence,
        "mean_x": exact.mean_x(),
        "std_x": exact.std_x(),
        "branch_probabilities": model.branch_probabilities(exact),
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
    }
