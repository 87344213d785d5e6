"""Scoring a network against the exact posterior (docs/science.md, "Scores of a compiled network").

The divergences themselves (kl_pq = KL(p || q), kl_qp = KL(q || p)) live in
:mod:`amortized.divergences`, which the request path also uses.
``best_in_family`` gives the member of q's family that a perfect network would
output for each y, so that trained - best is the amortisation gap.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from amortized.distributions import BranchedNormal, normal_log_prob
from amortized.divergences import QUADRATURE_GRID, kl_divergences  # noqa: F401 (scoring's divergences, one home)
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

TEST_SEED = 20171219  # the seed note's date
HERMITE_NODES, HERMITE_WEIGHTS = (torch.tensor(a) for a in np.polynomial.hermite.hermgauss(48))


def test_observations(model: ConjugateMixtureModel, num: int = 1000, seed: int = TEST_SEED) -> Tensor:
    """The fixed test set: ``num`` observations drawn from p(y) with a fixed seed (float64)."""
    return model.sample_joint(num, torch.Generator().manual_seed(seed)).y.double()


def _moment_matched(model: ConjugateMixtureModel, exact: BranchedNormal) -> BranchedNormal:
    """The forward-KL optimum: branch probabilities kept, each branch's mixture moment-matched."""
    member = (model.component_branch[None, :] == torch.arange(model.num_branches)[:, None]).to(exact.probs)
    branch_probs = exact.probs @ member.T
    within = exact.probs[:, None, :] * member / branch_probs[..., None]
    means = (within * exact.means[:, None, :]).sum(-1)
    offsets = exact.means[:, None, :] - means[..., None]  # centred terms: no cancellation when |mean| >> std
    variances = (within * (exact.stds**2)[:, None, :] + within * offsets * offsets).sum(-1)
    return BranchedNormal(branch_probs.log(), means, variances.sqrt())


def _mode_fit(model: ConjugateMixtureModel, exact: BranchedNormal, steps: int = 600) -> BranchedNormal:
    """The reverse-KL optimum: per branch, the best normal from a start at each of its components.

    Minimises KL(N(m, s^2) || p(x | y, b)) over (m, log s) by Adam on Gauss-Hermite
    quadrature, all observations and starts at once; branch probabilities are
    then proportional to p(b|y) exp(-KL_b), the exact optimum given the fits.
    """
    member = model.component_branch[None, :] == torch.arange(model.num_branches)[:, None]  # (branches, comps)
    start_branch = model.component_branch  # one start per component
    mean = exact.means.detach().clone().requires_grad_(True)
    log_std = exact.stds.detach().log().clone().requires_grad_(True)
    # p(x | b) for the branch of each start: component log-weights renormalised within that branch
    log_w = exact.log_probs[:, None, :].masked_fill(~member[start_branch][None], -math.inf)
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)  # (batch, starts, comps)

    def objective() -> Tensor:
        x = mean[..., None] + math.sqrt(2.0) * log_std.exp()[..., None] * HERMITE_NODES  # (batch, starts, nodes)
        log_p = torch.logsumexp(log_w[..., None, :] + normal_log_prob(x[..., None], exact.means[:, None, None, :], exact.stds[:, None, None, :]), -1)
        cross = (HERMITE_WEIGHTS * log_p).sum(-1) / math.sqrt(math.pi)
        entropy = log_std + 0.5 * math.log(2 * math.pi * math.e)
        return -entropy - cross

    optimiser = torch.optim.Adam([mean, log_std], lr=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        optimiser.zero_grad()
        objective().sum().backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        kl = objective()  # (batch, starts)
        per_branch = kl[:, None, :].masked_fill(~member[None], math.inf)  # (batch, branches, starts)
        best_kl, best_start = per_branch.min(-1)
        branch_probs = torch.log(exact.probs @ member.T.to(exact.probs))
        log_probs = torch.log_softmax(branch_probs - best_kl, -1)
        return BranchedNormal(log_probs, mean.gather(-1, best_start), log_std.exp().gather(-1, best_start))


def best_in_family(model: ConjugateMixtureModel, y: Tensor, objective: str) -> BranchedNormal:
    """The per-y optimum of ``objective`` within q's family (exact where the family holds p)."""
    exact = model.exact_posterior(y)
    if model.family_contains_posterior:
        return exact
    return _moment_matched(model, exact) if objective == "pq" else _mode_fit(model, exact)


def evaluate(model: ConjugateMixtureModel, net: InferenceNetwork, objective: str, y: Tensor | None = None) -> dict:
    """The scores an artifact carries: mean KLs both ways, limits, and the amortisation gap."""
    y = test_observations(model) if y is None else y
    exact = model.exact_posterior(y)
    with torch.no_grad():
        q = net(y.float()).to(torch.float64)
    kl_pq, kl_qp = kl_divergences(model, exact, q)
    trained = {"pq": kl_pq, "qp": kl_qp}
    best = {d: kl_divergences(model, exact, best_in_family(model, y, d))[0 if d == "pq" else 1] for d in ("pq", "qp")}
    metrics: dict = {
        "test_set": {"size": len(y), "seed": TEST_SEED},
        "kl_pq": kl_pq.mean().item(),
        "kl_qp": kl_qp.mean().item(),
        "limit_pq": best["pq"].mean().item(),
        "limit_qp": best["qp"].mean().item(),
        "gap_pq": (trained["pq"] - best["pq"]).mean().item(),
        "gap_qp": (trained["qp"] - best["qp"]).mean().item(),
    }
    metrics["amortisation_gap"] = metrics[f"gap_{objective}"]
    at_zero = net(torch.zeros(1)).to(torch.float64)
    best_zero = best_in_family(model, torch.zeros(1, dtype=torch.float64), objective)
    metrics["at_y0"] = {
        "q": {"probs": at_zero.probs[0].tolist(), "means": at_zero.means[0].tolist(), "stds": at_zero.stds[0].tolist()},
        "best": {"probs": best_zero.probs[0].tolist(), "means": best_zero.means[0].tolist(), "stds": best_zero.stds[0].tolist()},
    }
    if hasattr(net, "linear_parameters"):
        learned, exact_params = net.linear_parameters(), model.exact_linear_parameters()
        metrics["linear"] = {
            name: {"learned": learned[name], "exact": exact_params[name], "abs_error": abs(learned[name] - exact_params[name])}
            for name in learned
        }
    return metrics
