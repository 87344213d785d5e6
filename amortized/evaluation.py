"""Scoring a network against the exact posterior (docs/science.md, "Scores of a compiled network").

The divergences themselves (kl_pq = KL(p || q), kl_qp = KL(q || p)) live in
:mod:`amortized.divergences`, which the request path also uses.
``best_in_family`` gives the member of q's family that a perfect network would
output for each y, so that trained - best is the amortisation gap.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from amortized.distributions import BranchedNormal, normal_log_prob
from amortized.divergences import QUADRATURE_GRID, kl_divergences  # noqa: F401 (scoring's divergences, one home)
from amortized.mixture import contains_posterior, exact_in_layout
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

TEST_SEED = 20171219  # the seed note's date
HERMITE_NODES, HERMITE_WEIGHTS = (torch.tensor(a) for a in np.polynomial.hermite.hermgauss(48))


TEST_SIZE = 1000


def test_observations(model: ConjugateMixtureModel, num: int = TEST_SIZE, seed: int = TEST_SEED) -> Tensor:
    """The fixed test set: ``num`` observations drawn from p(y) with a fixed seed (float64)."""
    return model.sample_joint(num, torch.Generator().manual_seed(seed)).y.double()


def _moment_matched(model: ConjugateMixtureModel, exact: BranchedNormal) -> BranchedNormal:
    """The forward-KL optimum: branch probabilities kept, each branch's mixture moment-matched."""
    member = model.table(exact.probs).membership.T.to(exact.probs)  # (branches, components)
    branch_probs = exact.probs @ member.T
    within = exact.probs[:, None, :] * member / branch_probs[..., None]
    means = (within * exact.means[:, None, :]).sum(-1)
    offsets = exact.means[:, None, :] - means[..., None]  # centred terms: no cancellation when |mean| >> std
    variances = (within * (exact.stds**2)[:, None, :] + within * offsets * offsets).sum(-1)
    return BranchedNormal(branch_probs.log(), means, variances.sqrt())


def _mode_fit(model: ConjugateMixtureModel, exact: BranchedNormal, iterations: int = 40) -> BranchedNormal:
    """The reverse-KL optimum: per branch, the best normal from a start at each of its components.

    Minimises F(m, u) = KL(N(m, e^{2u}) || p(x | y, b)) + const = -u - E[log p(x | y, b)]
    over (m, u = log s) by damped Newton steps, all observations and starts
    at once, with the expectation by 48-point Gauss-Hermite quadrature. With
    l = log p(x | y, b), g = l', h = l'' and x = m + s t (t standard normal):
    dF/dm = -E[g], dF/du = -1 - s E[g t], d2F/dm2 = -E[h], d2F/dm du = -s E[h t],
    d2F/du2 = -s E[g t] - s^2 E[h t^2]. Starting at each component's own
    conjugate posterior (already close for separated modes), it converges to
    machine precision in a few steps (a Levenberg damping keeps each step a
    descent where the Hessian is not positive). Branch probabilities are then
    proportional to p(b|y) exp(-KL_b), the exact optimum given the fits.
    """
    member = model.table(exact.probs).membership.T > 0  # (branches, components)
    start_branch = model.component_branch  # one start per component
    exact = exact.to(torch.float64)
    mean, log_std = exact.means.clone(), exact.stds.log().clone()  # (batch, starts)
    # p(x | b) for the branch of each start: component log-weights renormalised within that branch
    log_w = exact.log_probs[:, None, :].masked_fill(~member[start_branch][None], -math.inf)
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)  # (batch, starts, comps)
    nodes, weights = math.sqrt(2.0) * HERMITE_NODES, HERMITE_WEIGHTS / math.sqrt(math.pi)
    c_mean, c_var = exact.means[:, None, None, :], (exact.stds**2)[:, None, None, :]

    def objective(mean: Tensor, log_std: Tensor) -> Tensor:
        x = mean[..., None] + log_std.exp()[..., None] * nodes  # (batch, starts, nodes)
        log_p = torch.logsumexp(log_w[..., None, :] + normal_log_prob(x[..., None], c_mean, c_var.sqrt()), -1)
        return -log_std - (weights * log_p).sum(-1)

    damping = torch.full_like(mean, 1e-3)
    for _ in range(iterations):
        s = log_std.exp()
        x = mean[..., None] + s[..., None] * nodes
        # (batch, starts, nodes, comps)
        terms = log_w[..., None, :] + normal_log_prob(x[..., None], c_mean, c_var.sqrt())
        r = torch.softmax(terms, -1)  # each component's responsibility at x
        slope = -(x[..., None] - c_mean) / c_var
        g = (r * slope).sum(-1)
        h = (r * (slope**2 - 1 / c_var)).sum(-1) - g**2
        e_g, e_gt, e_h, e_ht, e_htt = ((weights * v).sum(-1) for v in (g, g * nodes, h, h * nodes, h * nodes**2))
        grad_m, grad_u = -e_g, -1 - s * e_gt
        h_mm, h_mu, h_uu = -e_h, -s * e_ht, -s * e_gt - s**2 * e_htt
        before = objective(mean, log_std)
        pending = torch.ones_like(mean, dtype=torch.bool)
        for _ in range(8):  # Levenberg: raise the damping until the step does not raise F
            a, d = h_mm + damping, h_uu + damping
            det = a * d - h_mu**2
            step_m, step_u = -(d * grad_m - h_mu * grad_u) / det, -(a * grad_u - h_mu * grad_m) / det
            ok = pending & (det > 0) & torch.isfinite(step_m) & torch.isfinite(step_u)
            step_m, step_u = torch.where(ok, step_m, 0.0), torch.where(ok, step_u, 0.0)
            better = ok & (objective(mean + step_m, log_std + step_u) <= before + 1e-13 * before.abs())
            mean, log_std = torch.where(better, mean + step_m, mean), torch.where(better, log_std + step_u, log_std)
            damping = torch.where(better, (damping / 10).clamp_min(1e-12), torch.where(pending, damping * 10, damping))
            pending = pending & ~better
            if not bool(pending.any()):
                break
        if max(step_m.abs().max().item(), step_u.abs().max().item()) < 1e-10:  # converged everywhere
            break
    kl = objective(mean, log_std)  # (batch, starts), up to a constant shared by the starts of a branch
    per_branch = kl[:, None, :].masked_fill(~member[None], math.inf)  # (batch, branches, starts)
    best_kl, best_start = per_branch.min(-1)
    branch_probs = torch.log(exact.probs @ member.T.to(exact.probs))
    log_probs = torch.log_softmax(branch_probs - best_kl - 0.5 * math.log(2 * math.pi * math.e), -1)
    return BranchedNormal(log_probs, mean.gather(-1, best_start), log_std.exp().gather(-1, best_start))


def best_in_family(
    model: ConjugateMixtureModel, y: Tensor, objective: str, components: int = 1
) -> BranchedNormal | None:
    """The per-y optimum of ``objective`` within q's family (exact where the family holds p).

    ``components``: normals per branch (the mixture family). With K > 1 the
    optimum is known where K normals hold the posterior (then it is exact);
    otherwise None (not computed).
    """
    exact = model.exact_posterior(y)
    if components > 1:
        return exact_in_layout(model, exact, components) if contains_posterior(model, components) else None
    if model.family_contains_posterior:
        return exact
    return _moment_matched(model, exact) if objective == "pq" else _mode_fit(model, exact)


def evaluate(model: ConjugateMixtureModel, net: InferenceNetwork, objective: str, y: Tensor | None = None) -> dict:
    """The scores an artifact carries: mean KLs both ways, limits, and the amortisation gap.

    Limits (and so gaps) are None where the best member of the family is not
    known (a mixture of fewer normals than a branch's posterior components).
    """
    y = test_observations(model) if y is None else y
    k = getattr(net, "components", 1)
    exact = model.exact_posterior(y)
    with torch.no_grad():
        q = net(y.float()).to(torch.float64)
    kl_pq, kl_qp = kl_divergences(model, exact, q)
    trained = {"pq": kl_pq, "qp": kl_qp}
    best = {}
    for d in ("pq", "qp"):
        member = best_in_family(model, y, d, k)
        best[d] = None if member is None else kl_divergences(model, exact, member)[0 if d == "pq" else 1]
    mean = lambda v: None if v is None else v.mean().item()  # noqa: E731
    metrics: dict = {
        "test_set": {"size": len(y), "seed": TEST_SEED},
        "kl_pq": kl_pq.mean().item(),
        "kl_qp": kl_qp.mean().item(),
        "limit_pq": mean(best["pq"]),
        "limit_qp": mean(best["qp"]),
        "gap_pq": mean(None if best["pq"] is None else trained["pq"] - best["pq"]),
        "gap_qp": mean(None if best["qp"] is None else trained["qp"] - best["qp"]),
    }
    metrics["amortisation_gap"] = metrics[f"gap_{objective}"]
    with torch.no_grad():
        at_zero = net(torch.zeros(1)).to(torch.float64)
    best_zero = best_in_family(model, torch.zeros(1, dtype=torch.float64), objective, k)
    summary = lambda d: {"probs": d.probs[0].tolist(), "means": d.means[0].tolist(), "stds": d.stds[0].tolist()}  # noqa: E731
    metrics["at_y0"] = {"q": summary(at_zero), "best": None if best_zero is None else summary(best_zero)}
    if hasattr(net, "linear_parameters"):
        # only the linear family and the gaussian model have these (hasattr above)
        learned, exact_params = cast(Any, net).linear_parameters(), cast(Any, model).exact_linear_parameters()
        metrics["linear"] = {
            name: {
                "learned": learned[name],
                "exact": exact_params[name],
                "abs_error": abs(learned[name] - exact_params[name]),
            }
            for name in learned
        }
    return metrics


# How a recompiled network meets the served one: "if_better" (the job API's default) writes it only if it is not
# clearly worse on the same test set, "always" writes it anyway. Not clearly worse: its own objective's mean KL
# exceeds the served one's by at most this much (seeds and recipes move a good network's score by about 1e-3 nats
# on the committed variants; a bad recipe by orders of magnitude).
Replace = Literal["if_better", "always"]
REPLACE_TOLERANCE_NATS = 0.01
REPLACE_TOLERANCE_RATIO = 0.1


def clearly_worse(new: dict, served: dict, objective: str) -> str | None:
    """Why a network scored ``new`` is clearly worse than one scored ``served`` (both :func:`evaluate`'s), or None.

    Compares each one's own objective's mean KL over the test set (``kl_pq`` for pq, ``kl_qp`` for qp, nats):
    worse when new > served + max(REPLACE_TOLERANCE_NATS, REPLACE_TOLERANCE_RATIO x served). Raises ValueError
    when the two were scored on different test sets (sizes or seeds), which are not comparable.
    """
    if new.get("test_set") != served.get("test_set"):
        raise ValueError(f"scored on different test sets ({new.get('test_set')} and {served.get('test_set')})")
    key = f"kl_{objective}"
    ours, theirs = float(new[key]), float(served[key])
    allowed = theirs + max(REPLACE_TOLERANCE_NATS, REPLACE_TOLERANCE_RATIO * abs(theirs))
    if ours <= allowed or math.isnan(theirs):
        return None
    return f"{key} {ours:.4g} nats on the test set, against the served network's {theirs:.4g} (at most {allowed:.4g})"


# A compiled network's amortisation gap (its objective's, nats) up to this is called good: the committed networks'
# are 0.0002 to 0.02 (README results table); past it the network is far from the best its family can do.
GOOD_GAP_NATS = 0.05


def compile_quality(metrics: dict, objective: str) -> dict[str, Any]:
    """How close a compiled network is to its family's best, from :func:`evaluate`'s ``metrics``.

    ``{"verdict": "good" | "poor" | "unknown", "amortisation_gap": nats or None, "why": text}``: good when the
    objective's amortisation gap is at most GOOD_GAP_NATS, poor above it (or not a number), unknown where the
    family's best is not known (a mixture of fewer normals than a branch's posterior components).
    """
    gap = metrics.get(f"gap_{objective}")
    if gap is None:
        return {
            "verdict": "unknown",
            "amortisation_gap": None,
            "why": "the family's best is not known for this layout: judge each answer by its query-time verdict",
        }
    good = gap <= GOOD_GAP_NATS  # False for NaN
    relation = "at most" if good else "above"
    return {
        "verdict": "good" if good else "poor",
        "amortisation_gap": gap,
        "why": f"amortisation gap {gap:.4g} nats on the test set, {relation} {GOOD_GAP_NATS}"
        + ("" if good else ": far from the best its family can do; check the training settings"),
    }
