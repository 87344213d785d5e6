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
# Below this many draws the weights cannot be judged: PSIS needs S > 10^(1 / (1 - k)) draws for k-hat = k
# (Vehtari et al. 2024, sec. 3.2.2), which is 100 at the best tail this service calls good (k = 0.5).
MIN_JUDGED_SAMPLES = 100
# The missed-mass check: the posterior mass where q's density is below MISSED_DENSITY_RATIO times the
# posterior's (where N draws of q almost never land), estimated with the defensive mixture's own draws;
# q misses mass when that estimate exceeds MISSED_MASS_FLOOR by MISSED_MASS_Z standard errors.
MISSED_DENSITY_RATIO = 0.01
MISSED_MASS_FLOOR = 0.01
MISSED_MASS_Z = 2.0
DEFAULT_CHECK_SAMPLES = 1000  # the cross-check's own draws per proposal (AMORTIZED_CROSS_CHECK_SAMPLES)
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
    missed_mass: np.ndarray  # posterior mass where q's density is below MISSED_DENSITY_RATIO x the posterior's
    missed_mass_se: np.ndarray
    consistent: np.ndarray  # all three estimates agree within their errors
    misses_mass: np.ndarray  # this q's evidence falls below the mixture's, or its missed mass is significant
    num_samples: int  # draws of each proposal the check used


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
    """log(mean w), its delta-method standard error and the ESS, from sums of n weights divided by exp(shift).

    The standard error sqrt(1/ESS - 1/n) estimates the spread of the weights from
    the weights themselves: with one draw there is nothing to estimate it from,
    so it is NaN (null in JSON), never 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = total * total / squares
        se = np.sqrt(np.maximum(1.0 / ess - 1.0 / n, 0.0)) if n >= 2 else np.full_like(ess, math.nan)
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

    With ``other``, another proposal for the same rows, also log other - log
    proposal at each draw (what a mixture of the two needs). Every log
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
    return Weighed(branch, x, log_weights, summarise_weights(log_weights), log_ratio[0] if other is not None else None)


def mixture_check(log_weights: np.ndarray, log_ratio: np.ndarray) -> tuple[np.ndarray, ...]:
    """The defensive mixture (q + o) / 2 as proposal, from draws of q and of o, and the mass that q misses.

    ``log_weights`` and ``log_ratio`` are ``(2 b, n)``: rows alternate q's draws
    and o's draws of one observation, with log p(b, x, y) - log(own proposal)
    and log(the other) - log(own) at each draw. Pooling both sets against the
    mixture density is deterministic-mixture importance sampling (Owen & Zhou
    2000, "Safe and effective importance sampling"); its weights are bounded by
    twice either proposal's, so it covers what either covers.

    Returns per observation ``(b,)``: the mixture's log evidence, its standard
    error, and the *missed mass*: the posterior probability of the region where
    q's density is below ``MISSED_DENSITY_RATIO`` times the posterior's (where
    q's importance weights exceed Z / ratio), self-normalised over the pooled
    draws, with its delta-method standard error. Importance weights of q alone
    cannot see that region: its draws almost never land there.
    """
    rows, n = log_weights.shape
    b = rows // 2
    log_q_weights = log_weights.copy()
    log_q_weights[1::2] -= log_ratio[1::2]  # at o's draws: log p - log q = (log p - log o) - (log q - log o)
    # With d = log o - log q, the mixture's log weight is u + log 2 - log(1 + exp(-|d|)) where
    # u = log w - max(d, 0) is within log 2 of it: the largest u is a safe shift for its exponentials.
    bound = np.subtract(log_weights, np.maximum(log_ratio, 0.0))
    shift = finite_or_zero(bound.reshape(b, 2 * n).max(-1))
    bound -= np.repeat(shift, 2)[:, None]  # scratch arrays from here: exponentials in place
    np.exp(bound, out=bound)
    tails = np.exp(np.negative(np.abs(log_ratio)))
    threshold_offset = shift - math.log(n * MISSED_DENSITY_RATIO)  # log(Z / ratio) = log(total) + this
    total, squares, missed, missed_squares = kernels.mixture_sums(bound, tails, log_q_weights, threshold_offset)
    log_evidence, se, _ = evidence_from_sums(2.0 * total, 4.0 * squares, shift, 2 * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mass = missed / total
        variance = (missed_squares * (1.0 - 2.0 * mass) + mass * mass * squares) / (total * total)
        mass_se = np.sqrt(np.maximum(variance, 0.0))
    return log_evidence, se, mass, mass_se


def cross_check(
    model: ConjugateMixtureModel, y: np.ndarray, q: BranchedNormal, other: BranchedNormal, num_samples: int,
    generator: np.random.Generator,
) -> tuple[Weighed, CrossCheck]:
    """Sample q and ``other`` as one batch; evidence from each and from their mixture (q + other)/2.

    Returns q's draws and what they say, with the cross-check. Rows are
    interleaved (q, other) per observation, so the draws of one observation
    are contiguous whatever else is in the batch. ``misses_mass`` is raised
    when q's evidence falls below the mixture's beyond the combined standard
    errors, or when the missed mass (:func:`mixture_check`) exceeds
    ``MISSED_MASS_FLOOR`` by ``MISSED_MASS_Z`` standard errors.
    """
    b = len(y)
    both = weigh(model, np.repeat(y, 2), BranchedNormal.interleave([q, other]), num_samples, generator, BranchedNormal.interleave([other, q]))
    summary = both.summary
    mixture_evidence, mixture_se, missed, missed_se = mixture_check(both.log_weights, both.log_ratio)
    estimates = np.array([summary.log_evidence[0::2], summary.log_evidence[1::2], mixture_evidence])
    errors = np.array([summary.log_evidence_se[0::2], summary.log_evidence_se[1::2], mixture_se])
    gaps = np.abs(estimates[:, None] - estimates[None, :])
    allowed = AGREEMENT_Z * np.sqrt(errors[:, None] ** 2 + errors[None, :] ** 2) + AGREEMENT_FLOOR
    with np.errstate(invalid="ignore"):
        consistent = (gaps <= allowed).reshape(9, b).all(0)  # NaN compares False: never "consistent"
        # A proposal that misses mass underestimates the evidence; the mixture covers what either covers.
        below = ~(estimates[0] >= estimates[2] - allowed[0, 2])
        significant = ~(missed - MISSED_MASS_Z * missed_se <= MISSED_MASS_FLOOR)
    check = CrossCheck(estimates[1], errors[1], estimates[2], errors[2], missed, missed_se, consistent, below | significant, num_samples)
    return both.rows(slice(0, None, 2)), check


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


def required_samples(k: float) -> float:
    """The fewest draws for which a Pareto-smoothed estimate with tail shape ``k`` is reliable: 10^(1 / (1 - k)).

    Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25, sec. 3.2.2; infinite for k >= 1.
    """
    return math.inf if k >= 1 else 10 ** (1 / (1 - k))


def weights_verdict(num_samples: int, ess_fraction: float, ess: float, k: float) -> tuple[str, str]:
    """What q's own importance weights say: a level and the reason (see :func:`verdict`)."""
    if num_samples < MIN_JUDGED_SAMPLES:
        return "usable", (
            f"only {num_samples} draw{'s' if num_samples > 1 else ''}: below the {MIN_JUDGED_SAMPLES} from which importance "
            "weights can be judged, so ESS and k-hat were not checked"
        )
    if ess_fraction >= NEARLY_UNIFORM_ESS:
        return "reliable", f"weights are nearly uniform (ESS/N = {ess_fraction:.3f}); k-hat is not informative there"
    if not math.isfinite(k):
        if ess < 1.5:
            return "unreliable", f"the weights collapsed on one draw (ESS = {ess:.2f}), so k-hat cannot be fitted"
        return "unreliable", f"k-hat cannot be fitted: the largest weights are all equal (ESS/N = {ess_fraction:.3f})"
    if k > USABLE_K:
        return "unreliable", f"heavy-tailed weights (k-hat = {k:.2f} > {USABLE_K}, ESS/N = {ess_fraction:.3f})"
    if k > GOOD_K:
        needed = required_samples(k)
        if num_samples < needed:
            return "unreliable", f"k-hat = {k:.2f} needs at least {needed:.0f} draws for reliable estimates, got {num_samples}"
        return "usable", f"k-hat = {k:.2f} is between {GOOD_K} and {USABLE_K}: estimates are noisy (ESS/N = {ess_fraction:.3f})"
    return "reliable", f"k-hat = {k:.2f} < {GOOD_K} (ESS/N = {ess_fraction:.3f})"


def checked_verdict(level: str, why: str, check: CrossCheck, i: int) -> tuple[str, str]:
    """Row ``i``'s verdict after the cross-check: unreliable if q misses mass, at best usable unless it rules that out."""
    mass, mass_se = float(check.missed_mass[i]), float(check.missed_mass_se[i])
    draws = f"cross-check, {check.num_samples} draws of each network"
    if check.misses_mass[i]:
        if math.isfinite(mass) and mass - MISSED_MASS_Z * mass_se > MISSED_MASS_FLOOR:
            return "unreliable", why + (
                f"; but q misses posterior mass: {mass:.1%} (+- {mass_se:.1%}) of the posterior lies where q's density is"
                f" under {MISSED_DENSITY_RATIO:.0%} of it ({draws})"
            )
        return "unreliable", why + f"; but the evidence estimated with the mixture of both networks is higher: q misses posterior mass ({draws})"
    upper = mass + MISSED_MASS_Z * mass_se
    if not upper <= MISSED_MASS_FLOOR:
        level = "usable" if level == "reliable" else level
        return level, why + (
            f"; the cross-check cannot rule out that q misses posterior mass: up to {upper:.1%} of it may lie where q's"
            f" density is under {MISSED_DENSITY_RATIO:.0%} of the posterior's ({draws})"
        )
    return level, why + f"; the cross-check finds no missed mass (at most {upper:.1%}; {draws})"


def verdict(
    summary: WeightSummary, pareto_k: np.ndarray, num_samples: int, check: CrossCheck | None, unchecked: str = ""
) -> tuple[list[str], list[str]]:
    """A plain verdict per observation: "reliable", "usable" or "unreliable", with the reason in a sentence.

    - Non-finite weights: unreliable.
    - q's own weights (:func:`weights_verdict`): below ``MIN_JUDGED_SAMPLES``
      draws at best usable; nearly uniform weights are reliable whatever k-hat
      says (its tail fit is noise there); otherwise PSIS k-hat decides with
      Vehtari et al.'s thresholds 0.5 and 0.7 and sample-size rule.
    - The cross-check (:func:`cross_check`, :func:`checked_verdict`) makes an
      answer that misses posterior mass unreliable, and one whose missed mass it
      cannot bound below ``MISSED_MASS_FLOOR`` at best usable. Importance weights
      cannot see a mode q misses, so without the check (``check`` None;
      ``unchecked`` says why) nothing is reliable: at best usable.

    The reason says what was checked and what was not.
    """
    levels, reasons = [], []
    rows = zip(summary.ess_fraction.tolist(), summary.ess.tolist(), pareto_k.tolist(), summary.log_evidence.tolist())
    for i, (ess_fraction, ess, k, log_z) in enumerate(rows):
        if not math.isfinite(log_z) or not math.isfinite(ess_fraction):
            levels.append("unreliable")
            reasons.append("the importance weights are not finite numbers")
            continue
        level, why = weights_verdict(num_samples, ess_fraction, ess, k)
        if check is None:
            if level == "reliable":
                level = "usable"
            why += f"; the missed-mode check did not run ({unchecked or 'no cross-check'}), and importance weights cannot see a mode q misses"
        else:
            level, why = checked_verdict(level, why, check, i)
        levels.append(level)
        reasons.append(why)
    return levels, reasons


def analyse(
    model: ConjugateMixtureModel,
    y: np.ndarray,
    q: BranchedNormal,
    num_samples: int,
    generator: np.random.Generator,
    other: BranchedNormal | None = None,
    resample: bool = False,
    check_samples: int = DEFAULT_CHECK_SAMPLES,
    unchecked: str = "",
) -> PosteriorAnalysis:
    """Sample q for each y, weigh, diagnose; optionally cross-check with ``other`` and resample (SIR).

    ``y`` and the proposals are NumPy arrays (``BranchedNormal.numpy()``). The
    cross-check draws ``max(num_samples, check_samples)`` of each proposal, so
    its power does not fall with the caller's ``num_samples``: from
    ``check_samples`` draws on, q's own draws serve it; below, it draws its
    own, after q's. ``unchecked``: why there is no ``other`` (for the reason).
    """
    if other is None:
        weighed, check = weigh(model, y, q, num_samples, generator), None
    elif num_samples >= check_samples:
        weighed, check = cross_check(model, y, q, other, num_samples, generator)
    else:
        weighed = weigh(model, y, q, num_samples, generator)
        _, check = cross_check(model, y, q, other, check_samples, generator)
    summary = weighed.summary
    mean_x, std_x, branch_probabilities = kernels.weighted_moments(summary.normalised, weighed.x, weighed.branch, q.num_branches)
    pareto_k = pareto_k_hat(weighed.log_weights)
    verdicts, reasons = verdict(summary, pareto_k, num_samples, check, unchecked)
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
