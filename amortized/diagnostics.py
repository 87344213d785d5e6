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

Everything is vectorised over observations (batch) and samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from amortized.distributions import BranchedNormal
from amortized.evaluation import kl_divergences
from amortized.models import ConjugateMixtureModel

GOOD_K, USABLE_K = 0.5, 0.7  # k-hat thresholds of MODELS.md (Vehtari et al.)
NEARLY_UNIFORM_ESS = 0.9  # at or above this ESS/N the weights are nearly uniform and k-hat is ignored
AGREEMENT_Z = 3.0  # evidence estimates agree within this many combined standard errors ...
AGREEMENT_FLOOR = 1e-3  # ... plus this many nats, so that exact proposals never disagree by rounding


@dataclass(frozen=True)
class WeightSummary:
    """What a set of log weights says about the evidence, per observation ``(batch,)``."""

    log_evidence: Tensor
    log_evidence_se: Tensor
    elbo: Tensor
    ess: Tensor
    ess_fraction: Tensor


@dataclass(frozen=True)
class CrossCheck:
    """The evidence again, from the other compiled network and from the mixture of both."""

    log_evidence_other: Tensor
    log_evidence_other_se: Tensor
    log_evidence_mixture: Tensor
    log_evidence_mixture_se: Tensor
    consistent: Tensor  # all three estimates agree within their errors
    misses_mass: Tensor  # this q's estimate falls below the mixture's: it misses posterior mass


@dataclass(frozen=True)
class PosteriorAnalysis:
    """Samples of q, their log weights, and every per-query diagnostic; leading dimension = observations."""

    branch: Tensor
    x: Tensor
    log_weights: Tensor
    log_evidence: Tensor
    log_evidence_se: Tensor
    elbo: Tensor
    ess: Tensor
    ess_fraction: Tensor
    pareto_k: Tensor
    mean_x: Tensor
    std_x: Tensor
    branch_probabilities: Tensor
    verdict: list[str]
    reason: list[str]
    cross_check: CrossCheck | None = None
    resampled_branch: Tensor | None = None
    resampled_x: Tensor | None = None


def summarise_weights(log_weights: Tensor) -> WeightSummary:
    """Evidence estimate log(mean w), its delta-method standard error, ELBO and ESS."""
    n = log_weights.shape[-1]
    lse = torch.logsumexp(log_weights, -1)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_weights, -1))
    se = (1.0 / ess - 1.0 / n).clamp_min(0.0).sqrt()
    return WeightSummary(lse - math.log(n), se, log_weights.mean(-1), ess, ess / n)


def pareto_tail_size(num_samples: int) -> int:
    """How many of the largest weights the Pareto fit uses (as arviz-stats: 3 sqrt(N), or N/5 when small)."""
    return int(math.floor(3 * math.sqrt(num_samples))) if num_samples > 225 else num_samples // 5


def pareto_k_hat(log_weights: Tensor) -> Tensor:
    """PSIS k-hat per row: generalised Pareto shape of the largest weights (Zhang & Stephens fit).

    The same estimator as arviz-stats' ``psislw`` (with its weak prior towards
    0.5), vectorised over rows; NaN where the tail cannot be fitted (fewer than
    5 tail draws, or all tail weights equal).
    """
    log_weights = log_weights.to(torch.float64)
    n = pareto_tail_size(log_weights.shape[-1])
    if n < 5:
        return torch.full(log_weights.shape[:-1], math.nan, dtype=torch.float64)
    top = torch.topk(log_weights, n + 1, dim=-1).values  # descending; the last is the cutoff
    shifted = top - top[..., :1]
    tail = (shifted[..., :n].exp() - shifted[..., n:].exp()).flip(-1)  # exceedances, ascending
    prior_bs, prior_k = 3.0, 10.0
    m_est = 30 + int(n**0.5)
    grid = 1 - torch.sqrt(m_est / (torch.arange(1, m_est + 1, dtype=torch.float64) - 0.5))
    b = grid / (prior_bs * tail[..., int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)]) + 1 / tail[..., -1:]
    k = torch.log1p(-b[..., :, None] * tail[..., None, :]).mean(-1)
    profile = n * (torch.log(-b / k) - k - 1)
    weights = torch.softmax(profile, -1)
    weights = torch.where(weights >= 10 * torch.finfo(torch.float64).eps, weights, 0.0)
    b_post = (b * weights).sum(-1) / weights.sum(-1)
    k_post = torch.log1p(-b_post[..., None] * tail).mean(-1)
    return (n * k_post + prior_k * 0.5) / (n + prior_k)


def verdict(summary: WeightSummary, pareto_k: Tensor, misses_mass: Tensor | None) -> tuple[list[str], list[str]]:
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
    model: ConjugateMixtureModel, y: Tensor, q: BranchedNormal, other: BranchedNormal, num_samples: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, CrossCheck]:
    """Sample q and ``other`` as one stacked batch; evidence from each and from their mixture (q + other)/2.

    Returns q's samples and log weights (its first half) with the cross-check.
    The mixture estimate pools both sample sets and weighs them against the
    mixture density (deterministic-mixture importance sampling).
    """
    b = len(y)
    both, y2 = BranchedNormal.cat([q, other]), torch.cat([y, y])
    branch, x = both.sample(num_samples, generator)
    log_p = model.log_joint(branch, x, y2[:, None])
    log_own = both.log_prob(branch, x)
    log_cross = BranchedNormal.cat([other, q]).log_prob(branch, x)  # the other proposal's density at each sample
    log_weights = log_p - log_own
    summary = summarise_weights(log_weights)
    mixture_log_weights = log_p - (torch.logaddexp(log_own, log_cross) - math.log(2))
    mixture = summarise_weights(torch.cat([mixture_log_weights[:b], mixture_log_weights[b:]], -1))
    estimates = torch.stack([summary.log_evidence[:b], summary.log_evidence[b:], mixture.log_evidence])
    errors = torch.stack([summary.log_evidence_se[:b], summary.log_evidence_se[b:], mixture.log_evidence_se])
    gaps = (estimates[:, None] - estimates[None, :]).abs()
    allowed = AGREEMENT_Z * torch.sqrt(errors[:, None] ** 2 + errors[None, :] ** 2) + AGREEMENT_FLOOR
    consistent = (gaps <= allowed).flatten(0, 1).all(0)  # NaN compares False: never "consistent"
    # A proposal that misses mass underestimates the evidence; the mixture covers what either covers.
    misses_mass = ~(estimates[0] >= estimates[2] - allowed[0, 2])
    check = CrossCheck(estimates[1], errors[1], estimates[2], errors[2], consistent, misses_mass)
    return branch[:b], x[:b], log_weights[:b], check


def analyse(
    model: ConjugateMixtureModel,
    y: Tensor,
    q: BranchedNormal,
    num_samples: int,
    generator: torch.Generator,
    other: BranchedNormal | None = None,
    resample: bool = False,
) -> PosteriorAnalysis:
    """Sample q for each y, weigh, diagnose; optionally cross-check with ``other`` and resample (SIR)."""
    y, q = y.to(torch.float64), q.to(torch.float64)
    if other is None:
        check = None
        branch, x = q.sample(num_samples, generator)
        log_weights = model.log_joint(branch, x, y[:, None]) - q.log_prob(branch, x)
    else:
        branch, x, log_weights, check = cross_check(model, y, q, other.to(torch.float64), num_samples, generator)
    summary = summarise_weights(log_weights)
    pareto_k = pareto_k_hat(log_weights)
    normalised = torch.softmax(log_weights, -1)
    mean_x = (normalised * x).sum(-1)
    std_x = (normalised * (x - mean_x[:, None]) ** 2).sum(-1).sqrt()
    branch_probabilities = torch.zeros(len(y), model.num_branches, dtype=torch.float64).scatter_add_(-1, branch, normalised)
    verdicts, reasons = verdict(summary, pareto_k, None if check is None else check.misses_mass)
    resampled_branch = resampled_x = None
    if resample:
        finite = torch.where(normalised.isfinite(), normalised, 0.0)
        finite = torch.where(finite.sum(-1, keepdim=True) > 0, finite, 1.0)  # uniform if every weight failed
        picks = torch.multinomial(finite, num_samples, replacement=True, generator=generator)
        resampled_branch, resampled_x = branch.gather(-1, picks), x.gather(-1, picks)
    return PosteriorAnalysis(
        branch=branch,
        x=x,
        log_weights=log_weights,
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


def latent_marginals(model: ConjugateMixtureModel, branch_probabilities: Tensor) -> dict[str, dict[int, Tensor]]:
    """P(latent = value | y) for each discrete latent, from branch probabilities ``(batch, branches)``."""
    return {
        name: {value: branch_probabilities @ member.to(branch_probabilities) for value, member in values.items()}
        for name, values in model.latent_value_members.items()
    }


def exact_summary(model: ConjugateMixtureModel, y: Tensor, q: BranchedNormal) -> dict[str, Tensor]:
    """The truth for each y, and how far this q is from it (kl_pq, kl_qp)."""
    y = y.to(torch.float64)
    exact, log_evidence = model.exact_posterior_and_evidence(y)
    kl_pq, kl_qp = kl_divergences(model, exact, q)
    return {
        "log_evidence": log_evidence,
        "mean_x": exact.mean_x(),
        "std_x": exact.std_x(),
        "branch_probabilities": model.branch_probabilities(exact),
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
    }
