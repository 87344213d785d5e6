"""How far to trust one answer q(.|y), per query: the diagnostics, the cross-check and the verdict.

This module orchestrates; the parts live in :mod:`amortized.importance`
(weighing, PSIS k-hat, the compiled loops, the random streams) and
:mod:`amortized.divergences` (KL against the exact posterior). It draws N
samples of q, weighs them, reads off the evidence estimate, ESS, k-hat and
self-normalised posterior summaries (docs/science.md, "Importance-weighted
diagnostics"), and judges them. Two honest caveats shape the verdict:

- Importance weights cannot see a mode that q misses (a mode-seeking ``qp``
  network on ``gmm`` looks perfect by ESS and k-hat). So, when another
  compiled network is at hand, its draws and q's are pooled as the defensive
  mixture of both, which estimates the evidence again and the posterior mass
  q misses (:func:`cross_check`).
- When q is nearly exact the weights are nearly uniform and the Pareto fit to
  their tail is noise; a high k-hat there is not a warning.

Everything is vectorised over observations (batch) and samples. This is the
request path, where torch's fixed cost per call would dominate: NumPy and
compiled loops only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from amortized.arrays import gather
from amortized.compiled import compiled
from amortized.distributions import BranchedNormal, inverse_cdf
from amortized.divergences import kl_divergences
from amortized.importance import kernels
from amortized.importance.psis import pareto_k_hat, required_samples
from amortized.importance.streams import RandomStream
from amortized.importance.weighing import MISSED_DENSITY_RATIO, Weighed, WeightSummary, mixture_check, weigh
from amortized.models import ConjugateMixtureModel

GOOD_K, USABLE_K = 0.5, 0.7  # k-hat thresholds (Vehtari et al. 2024; docs/science.md)
NEARLY_UNIFORM_ESS = 0.9  # at or above this ESS/N the weights are nearly uniform and k-hat is ignored
AGREEMENT_Z = 3.0  # evidence estimates agree within this many combined standard errors ...
AGREEMENT_FLOOR = 1e-3  # ... plus this many nats, so that exact proposals never disagree by rounding
# Below this many draws the weights cannot be judged: PSIS needs S > 10^(1 / (1 - k)) draws for k-hat = k
# (Vehtari et al. 2024, sec. 3.2.2), which is 100 at the best tail this service calls good (k = 0.5).
MIN_JUDGED_SAMPLES = 100
# The missed-mass check: the posterior mass where q's density is below MISSED_DENSITY_RATIO times the
# posterior's (where N draws of q almost never land), estimated with the defensive mixture's own draws;
# q misses mass when that estimate exceeds MISSED_MASS_FLOOR by MISSED_MASS_Z standard errors.
MISSED_MASS_FLOOR = 0.01
MISSED_MASS_Z = 2.0
# ... provided the pooled weights rest on at least this many effective draws: below, the self-normalised missed
# mass and its delta-method standard error are one or two draws' say (0 +- 0 or 1 +- 0 whatever the truth, as at
# y = 1e9 where both networks sit far from the posterior), so the check reports no figure and cannot rule missed
# mass out (Owen 2013, "Monte Carlo theory, methods and examples", sec. 9.3: the ESS as a diagnostic)
MIN_POOLED_ESS = 10.0
# No pooled draw in the missed region bounds its mass only to about 3 / ESS (the rule of three: with none of n
# independent draws in a region, its probability is below 3 / n at 95%; Hanley & Lippman-Hand 1983, "If nothing
# goes wrong, is everything all right?", JAMA 249(13)). The delta-method error of a mass estimated as 0 is 0, so
# "at most 0.0%" was claimed where neither network's draws reached 2.9% of the posterior (gaussian at y = 2e4)
RULE_OF_THREE = 3.0
DEFAULT_CHECK_SAMPLES = 1000  # the cross-check's own draws per proposal (AMORTIZED_CROSS_CHECK_SAMPLES)
# Per query, the KLs that need quadrature (gmm) integrate under q's normals on +-8 sd with 301 points, not
# the scoring grid's +-12 sd with 801: within 3.4e-5 of a 4001-point reference over y in [-40, 40] (the
# tests hold it within 2e-4 of the scoring grid).
REQUEST_KL_GRID = np.linspace(-8.0, 8.0, 301)


@dataclass(frozen=True)
class CrossCheckResult:
    """The evidence again, from the other compiled network and from the mixture of both."""

    log_evidence_other: np.ndarray
    log_evidence_other_se: np.ndarray
    log_evidence_mixture: np.ndarray
    log_evidence_mixture_se: np.ndarray
    missed_mass: np.ndarray  # posterior mass where q's density is below MISSED_DENSITY_RATIO x the posterior's
    missed_mass_se: np.ndarray
    pooled_ess: np.ndarray  # effective draws of the pooled weights; below MIN_POOLED_ESS the missed mass is NaN
    consistent: np.ndarray  # all three estimates agree within their errors
    misses_mass: np.ndarray  # this q's evidence falls below the mixture's, or its missed mass is significant
    num_samples: int  # draws of each proposal the check used


@dataclass(frozen=True)
class PosteriorAnalysis:
    """Samples of q, their log weights, and every per-query diagnostic; leading dimension = observations."""

    branch: np.ndarray
    x: np.ndarray
    log_weights: np.ndarray
    log_evidence: np.ndarray
    log_evidence_se: np.ndarray  # NaN where q's own weights are unreliable (analyse)
    elbo: np.ndarray
    ess: np.ndarray
    ess_fraction: np.ndarray
    pareto_k: np.ndarray
    mean_x: np.ndarray
    std_x: np.ndarray
    branch_probabilities: np.ndarray
    verdict: list[str]
    reason: list[str]
    cross_check: CrossCheckResult | None = None
    resampled_branch: np.ndarray | None = None
    resampled_x: np.ndarray | None = None


def missed_mass_exceeds_floor(mass: Any, se: Any) -> Any:
    """Whether the missed mass exceeds ``MISSED_MASS_FLOOR`` by ``MISSED_MASS_Z`` standard errors (floats, arrays)."""
    with np.errstate(invalid="ignore"):
        return mass - MISSED_MASS_Z * se > MISSED_MASS_FLOOR


@compiled
def evidence_agreement(
    estimates: np.ndarray, errors: np.ndarray, missed: np.ndarray, missed_se: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per observation, from the three evidence estimates ``(3, b)`` (q, other, mixture) and their standard errors.

    ``consistent``: every two agree within ``AGREEMENT_Z`` combined standard
    errors plus ``AGREEMENT_FLOOR`` (NaN compares False: never consistent).
    ``misses_mass``: q's estimate falls below the mixture's by more than that
    (a proposal that misses mass underestimates the evidence; the mixture
    covers what either covers), or the missed mass exceeds the floor
    significantly (:func:`missed_mass_exceeds_floor`), or that test is not a
    number (it cannot rule missed mass out). One compiled pass over a dozen
    small arrays' worth of NumPy calls.
    """
    b = estimates.shape[1]
    consistent, misses = np.empty(b, np.bool_), np.empty(b, np.bool_)
    for r in range(b):
        agree = True
        for i in range(3):
            for j in range(3):
                allowed = AGREEMENT_Z * math.sqrt(errors[i, r] ** 2 + errors[j, r] ** 2) + AGREEMENT_FLOOR
                agree &= abs(estimates[i, r] - estimates[j, r]) <= allowed
        consistent[r] = agree
        allowed = AGREEMENT_Z * math.sqrt(errors[0, r] ** 2 + errors[2, r] ** 2) + AGREEMENT_FLOOR
        below = not estimates[0, r] >= estimates[2, r] - allowed
        excess = missed[r] - MISSED_MASS_Z * missed_se[r]
        misses[r] = below or excess > MISSED_MASS_FLOOR or math.isnan(excess)
    return consistent, misses


def cross_check(
    model: ConjugateMixtureModel,
    y: np.ndarray,
    q: BranchedNormal,
    other: BranchedNormal,
    num_samples: int,
    generator: RandomStream,
) -> tuple[Weighed, CrossCheckResult]:
    """Sample q and ``other`` as one batch; evidence from each and from their mixture (q + other)/2.

    Returns q's draws and what they say, with the cross-check. Rows are
    interleaved (q, other) per observation, so the draws of one observation
    are contiguous whatever else is in the batch. ``misses_mass`` is raised
    when q's evidence falls below the mixture's beyond the combined standard
    errors, or when the missed mass (:func:`mixture_check`) exceeds
    ``MISSED_MASS_FLOOR`` by ``MISSED_MASS_Z`` standard errors.
    """
    both = weigh(
        model,
        np.repeat(y, 2),
        BranchedNormal.interleave([q, other]),
        num_samples,
        generator,
        BranchedNormal.interleave([other, q]),
    )
    summary = both.summary
    assert both.log_ratio is not None  # weighed against the other proposal
    mixture_evidence, mixture_se, pooled_ess, missed, missed_se = mixture_check(both.log_weights, both.log_ratio)
    unjudged = ~(pooled_ess >= MIN_POOLED_ESS)  # NaN ESS included
    missed, missed_se = np.where(unjudged, math.nan, missed), np.where(unjudged, math.nan, missed_se)
    estimates = np.array([summary.log_evidence[0::2], summary.log_evidence[1::2], mixture_evidence])
    errors = np.array([summary.log_evidence_se[0::2], summary.log_evidence_se[1::2], mixture_se])
    consistent, misses = evidence_agreement(estimates, errors, missed, missed_se)
    check = CrossCheckResult(
        estimates[1], errors[1], estimates[2], errors[2], missed, missed_se, pooled_ess, consistent, misses, num_samples
    )
    return both.rows(slice(0, None, 2)), check


def weights_verdict(num_samples: int, ess_fraction: float, ess: float, k: float) -> tuple[str, str]:
    """What q's own importance weights say: a level and the reason (see :func:`verdict`)."""
    if num_samples < MIN_JUDGED_SAMPLES:
        return "usable", (
            f"only {num_samples} draw{'s' if num_samples > 1 else ''}: below the {MIN_JUDGED_SAMPLES} from which "
            "importance weights can be judged, so ESS and k-hat were not checked"
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
            return (
                "unreliable",
                f"k-hat = {k:.2f} needs at least {needed:.0f} draws for reliable estimates, got {num_samples}",
            )
        return (
            "usable",
            f"k-hat = {k:.2f} is between {GOOD_K} and {USABLE_K}: estimates are noisy (ESS/N = {ess_fraction:.3f})",
        )
    return "reliable", f"k-hat = {k:.2f} < {GOOD_K} (ESS/N = {ess_fraction:.3f})"


def checked_verdict(level: str, why: str, check: CrossCheckResult, i: int) -> tuple[str, str]:
    """Row ``i``'s verdict after the cross-check.

    Unreliable if q misses mass, at best usable unless it rules that out.
    """
    mass, mass_se = float(check.missed_mass[i]), float(check.missed_mass_se[i])
    draws = f"cross-check, {check.num_samples} draws of each network"
    if not math.isfinite(mass):
        return "unreliable", why + (
            "; the cross-check cannot tell whether q misses posterior mass: the pooled draws of both networks "
            f"carry {float(check.pooled_ess[i]):.2f} effective draws (below {MIN_POOLED_ESS:g}), so neither network "
            f"covers the posterior well enough to measure it ({draws})"
        )
    if check.misses_mass[i]:
        if missed_mass_exceeds_floor(mass, mass_se):
            return "unreliable", why + (
                f"; but q misses posterior mass: {mass:.1%} (+- {mass_se:.1%}) of the posterior lies where q's density "
                f"is under {MISSED_DENSITY_RATIO:.0%} of it ({draws})"
            )
        return (
            "unreliable",
            why + "; but the evidence estimated with the mixture of both networks is higher: q misses posterior mass "
            f"({draws})",
        )
    upper = max(mass + MISSED_MASS_Z * mass_se, RULE_OF_THREE / float(check.pooled_ess[i]))
    if not upper <= MISSED_MASS_FLOOR:
        level = "usable" if level == "reliable" else level
        return level, why + (
            f"; the cross-check cannot rule out that q misses posterior mass: up to {upper:.1%} of it, by its draws, "
            f"may lie where q's density is under {MISSED_DENSITY_RATIO:.0%} of the posterior's ({draws})"
        )
    # the bound is the pooled draws': a region neither network reaches is beyond it (README, "Is the verdict right?")
    return level, why + (
        f"; the cross-check finds no missed mass (at most {upper:.1%} by its draws, which see only where one network "
        f"or the other reaches; {draws})"
    )


def verdict(
    summary: WeightSummary, pareto_k: np.ndarray, num_samples: int, check: CrossCheckResult | None, unchecked: str = ""
) -> tuple[list[str], list[str], np.ndarray]:
    """A plain verdict per observation: "reliable", "usable" or "unreliable", with the reason in a sentence.

    Also, per observation, whether q's own weights are unreliable by themselves (before the cross-check): non-finite,
    collapsed, or too heavy-tailed for the draws (bool ``(batch,)``); their standard error is then not reported
    (:func:`analyse`).

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
    own_unreliable = np.ones(len(pareto_k), dtype=bool)
    rows = zip(summary.ess_fraction.tolist(), summary.ess.tolist(), pareto_k.tolist(), summary.log_evidence.tolist())
    for i, (ess_fraction, ess, k, log_z) in enumerate(rows):
        if not math.isfinite(log_z) or not math.isfinite(ess_fraction):
            levels.append("unreliable")
            reasons.append("the importance weights are not finite numbers")
            continue
        level, why = weights_verdict(num_samples, ess_fraction, ess, k)
        own_unreliable[i] = level == "unreliable"
        if check is None:
            if level == "reliable":
                level = "usable"
            why += (
                f"; the missed-mode check did not run ({unchecked or 'no cross-check'}), "
                "and importance weights cannot see a mode q misses"
            )
        else:
            level, why = checked_verdict(level, why, check, i)
        levels.append(level)
        reasons.append(why)
    return levels, reasons, own_unreliable


def analyse(
    model: ConjugateMixtureModel,
    y: np.ndarray,
    q: BranchedNormal,
    num_samples: int,
    generator: RandomStream,
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

    The evidence's standard error is NaN where q's own weights are unreliable (:func:`verdict`): the delta-method
    value sqrt(1/ESS - 1/N) is estimated from the weights themselves, so it can never exceed 1 nat, while a
    heavy-tailed or collapsed set of weights can miss log p(y) by any amount (with k-hat above 0.5 their variance
    is infinite; Vehtari et al. 2024, sec. 3: above 0.7 no Monte Carlo error estimate can be trusted). The
    cross-check still weighs q's estimate with the delta-method value.
    """
    if other is None:
        weighed, check = weigh(model, y, q, num_samples, generator), None
    elif num_samples >= check_samples:
        weighed, check = cross_check(model, y, q, other, num_samples, generator)
    else:
        weighed = weigh(model, y, q, num_samples, generator)
        _, check = cross_check(model, y, q, other, check_samples, generator)
    summary = weighed.summary
    mean_x, std_x, branch_probabilities = kernels.weighted_moments(
        summary.normalised, weighed.x, weighed.branch, q.num_branches
    )
    pareto_k = pareto_k_hat(weighed.log_weights)
    verdicts, reasons, own_unreliable = verdict(summary, pareto_k, num_samples, check, unchecked)
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
        log_evidence_se=np.where(own_unreliable, math.nan, summary.log_evidence_se),
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


def exact_summary(
    model: ConjugateMixtureModel, truth: tuple[BranchedNormal, np.ndarray], q: BranchedNormal
) -> dict[str, np.ndarray]:
    """The truth for each y (``model.exact_posterior_and_evidence(y)``), and how far this q is from it."""
    exact, log_evidence = truth
    kl_pq, kl_qp = kl_divergences(model, exact, q, REQUEST_KL_GRID)
    mean_x, std_x = exact.moments()
    return {
        "log_evidence": log_evidence,
        "mean_x": mean_x,
        "std_x": std_x,
        "branch_probabilities": model.branch_probabilities(exact),
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
    }
