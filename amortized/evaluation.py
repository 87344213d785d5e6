"""Scoring a network against the exact posterior, as MODELS.md prescribes.

``kl_divergences`` gives kl_pq = KL(p || q) and kl_qp = KL(q || p) over all
latents for every observation: in closed form when each branch of p is one
normal, by quadrature over x otherwise (``gmm``, where p(x|y) is a mixture).
``best_in_family`` gives the member of q's family that a perfect network would
output for each y, so that trained - best is the amortisation gap.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from amortized import kernels
from amortized.arrays import Array, logsumexp
from amortized.distributions import LOG_SQRT_2PI, BranchedNormal, normal_kl, normal_log_prob
from amortized.mixture import contains_posterior, exact_in_layout
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

TEST_SEED = 20171219  # the seed note's date
QUADRATURE_POINTS = 801  # per component, over +-12 standard deviations
QUADRATURE_GRID = np.linspace(-12.0, 12.0, QUADRATURE_POINTS)
# Under one of p's own components, log p(b, x) is smooth on the component's scale: 101 points give 1e-10
# (measured against 4001); q's normal may straddle the sharp switch between p's modes and needs the fine grid.
COMPONENT_GRID = np.linspace(-10.0, 10.0, 101)
HERMITE_NODES, HERMITE_WEIGHTS = (torch.tensor(a) for a in np.polynomial.hermite.hermgauss(48))


TEST_SIZE = 1000


def test_observations(model: ConjugateMixtureModel, num: int = TEST_SIZE, seed: int = TEST_SEED) -> Tensor:
    """The fixed test set: ``num`` observations drawn from p(y) with a fixed seed (float64)."""
    return model.sample_joint(num, torch.Generator().manual_seed(seed)).y.double()


def expectation_weights(grid: np.ndarray) -> np.ndarray:
    """Weights w with sum_t w_t f(grid_t) ~ E[f(t)] for t ~ N(0, 1): trapezoids on ``grid``, normalised to sum to 1."""
    return _expectation_weights(np.ascontiguousarray(grid, dtype=np.float64).tobytes())


@functools.lru_cache(maxsize=16)
def _expectation_weights(grid_bytes: bytes) -> np.ndarray:  # a few grids serve every request: computed once each
    grid = np.frombuffer(grid_bytes)
    steps = np.diff(grid)
    widths = np.concatenate([steps[:1], steps[1:] + steps[:-1], steps[-1:]]) / 2
    weights = widths * np.exp(-0.5 * grid**2)
    weights /= weights.sum()
    weights.flags.writeable = False
    return weights


def dense_expected_log_density(
    centres: np.ndarray, widths: np.ndarray, centre_branch: np.ndarray, log_weights: np.ndarray, means: np.ndarray,
    stds: np.ndarray, membership: np.ndarray, grid: np.ndarray, grid_weights: np.ndarray,
) -> np.ndarray:
    """What :func:`amortized.kernels.expected_log_density` computes, as whole-array NumPy (scoring: no compile step)."""
    x = centres[..., None] + widths[..., None] * grid  # (rows, normals, points)
    z = (x[..., None] - means[:, None, None, :]) / stds[:, None, None, :]
    terms = (log_weights - np.log(stds) - LOG_SQRT_2PI)[:, None, None, :] - 0.5 * z * z  # (rows, normals, points, components)
    inside = np.asarray(membership)[:, np.asarray(centre_branch)].T[None, :, None, :]  # the components of each normal's branch
    with np.errstate(divide="ignore"):
        return logsumexp(np.where(inside, terms, -math.inf), -1) @ grid_weights


def kl_divergences(
    model: ConjugateMixtureModel, exact: BranchedNormal, q: BranchedNormal, grid: np.ndarray = QUADRATURE_GRID, dense: bool = False
) -> tuple[Array, Array]:
    """(kl_pq, kl_qp) per observation, in nats, float64; ``exact`` is over components.

    Torch tensors in, tensors out (scoring, no gradients); NumPy arrays in,
    arrays out (the request path). In closed form when each branch of p is
    one normal. Otherwise (``gmm``: p(x | b, y) is a mixture) each KL is
    closed-form terms plus expectations of log p(b, x) under single normals,
    p's components for KL(p || q) and q's branches for KL(q || p), each by
    quadrature on standard deviations around its normal (``grid`` for q's,
    ``COMPONENT_GRID`` for p's own components):

        KL(p || q) = sum_c w_c (E_c[log p(b_c, x)] - log q_b_c - E_c[log N(x; mu_b_c, sigma_b_c^2)])
        KL(q || p) = sum_b q_b (log q_b - H(N(mu_b, sigma_b^2)) - E_b[log p(b, x)])
    """
    if isinstance(q.means, torch.Tensor):  # scoring: the same sums by dense NumPy (no kernel to compile in each worker)
        pair = kl_divergences(model, exact.to(torch.float64).numpy(), q.to(torch.float64).numpy(), grid, dense=True)
        return tuple(torch.from_numpy(np.asarray(kl)) for kl in pair)  # type: ignore[return-value]
    expected_log_density = dense_expected_log_density if dense else kernels.expected_log_density
    model = getattr(model, "base", model)  # a mixture network's view of the model: the model's own tables
    if q.num_branches > model.table(exact.means).membership.shape[1]:
        return _mixture_kl_divergences(model, exact, q, grid, expected_log_density)
    if model.family_contains_posterior:
        kl_pq = (exact.probs * (exact.log_probs - q.log_probs + normal_kl(exact.means, exact.stds, q.means, q.stds))).sum(-1)
        kl_qp = (q.probs * (q.log_probs - exact.log_probs + normal_kl(q.means, q.stds, exact.means, exact.stds))).sum(-1)
        return kl_pq, kl_qp
    t = model.table(exact.means)
    membership, branch_of, branches = t.membership > 0, t.component_branch, np.arange(q.num_branches)
    p = [np.ascontiguousarray(a, dtype=np.float64) for a in (exact.log_probs, exact.means, exact.stds)]

    def expected_log_p(centres: np.ndarray, widths: np.ndarray, centre_branch: np.ndarray, points: np.ndarray) -> np.ndarray:
        centres, widths = (np.ascontiguousarray(a, dtype=np.float64) for a in (centres, widths))
        return expected_log_density(centres, widths, centre_branch, *p, membership, points, expectation_weights(points))

    mu, sigma = q.means[:, branch_of], q.stds[:, branch_of]  # q's normal in each component's branch
    cross = q.log_probs[:, branch_of] - np.log(sigma) - LOG_SQRT_2PI - ((exact.means - mu) ** 2 + exact.stds**2) / (2 * sigma**2)
    kl_pq = (exact.probs * (expected_log_p(exact.means, exact.stds, branch_of, COMPONENT_GRID) - cross)).sum(-1)
    entropy = np.log(q.stds) + 0.5 * math.log(2 * math.pi * math.e)
    kl_qp = (q.probs * (q.log_probs - entropy - expected_log_p(q.means, q.stds, branches, grid))).sum(-1)
    return kl_pq, kl_qp


def _mixture_kl_divergences(
    model: ConjugateMixtureModel, exact: BranchedNormal, q: BranchedNormal, grid: np.ndarray, expected_log_density=None
) -> tuple[np.ndarray, np.ndarray]:
    """Both KLs for a q of K normals per model branch (q-branch b * K + j), NumPy.

    log q(b, x) is then itself a mixture, so every term is an expectation of a
    log mixture density under one normal, by quadrature (``grid`` for q's
    normals and for log q under p's components, ``COMPONENT_GRID`` for log p
    under its own components):

        KL(p || q) = sum_c w_c (E_c[log p(b_c, x)] - E_c[log q(b_c, x)])
        KL(q || p) = sum_g q_g (E_g[log q(b_g, x)] - E_g[log p(b_g, x)])   over q's normals g
    """
    t = model.table(exact.means)
    membership, branch_of = t.membership > 0, t.component_branch
    branches = membership.shape[1]
    k = q.num_branches // branches
    q_branch = np.arange(q.num_branches) // k
    q_membership = q_branch[:, None] == np.arange(branches)[None, :]
    p = [np.ascontiguousarray(a, dtype=np.float64) for a in (exact.log_probs, exact.means, exact.stds)]
    qs = [np.ascontiguousarray(a, dtype=np.float64) for a in (q.log_probs, q.means, q.stds)]

    def expected(centres, widths, centre_branch, density, member, points):
        centres, widths = (np.ascontiguousarray(a, dtype=np.float64) for a in (centres, widths))
        return (expected_log_density or kernels.expected_log_density)(
            centres, widths, centre_branch, *density, member, points, expectation_weights(points)
        )

    kl_pq = (exact.probs * (expected(p[1], p[2], branch_of, p, membership, COMPONENT_GRID) - expected(p[1], p[2], branch_of, qs, q_membership, grid))).sum(-1)
    per_normal = expected(qs[1], qs[2], q_branch, qs, q_membership, grid) - expected(qs[1], qs[2], q_branch, p, membership, grid)
    probs = q.probs
    kl_qp = np.where(probs > 0, probs * per_normal, 0.0).sum(-1)
    return kl_pq, kl_qp


def _moment_matched(model: ConjugateMixtureModel, exact: BranchedNormal) -> BranchedNormal:
    """The forward-KL optimum: branch probabilities kept, each branch's mixture moment-matched."""
    member = (model.component_branch[None, :] == torch.arange(model.num_branches)[:, None]).to(exact.probs)
    branch_probs = exact.probs @ member.T
    within = exact.probs[:, None, :] * member / branch_probs[..., None]
    means = (within * exact.means[:, None, :]).sum(-1)
    second = (within * (exact.stds**2 + exact.means**2)[:, None, :]).sum(-1)
    return BranchedNormal(branch_probs.log(), means, (second - means**2).clamp_min(0).sqrt())


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
    member = model.component_branch[None, :] == torch.arange(model.num_branches)[:, None]  # (branches, comps)
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
        terms = log_w[..., None, :] + normal_log_prob(x[..., None], c_mean, c_var.sqrt())  # (batch, starts, nodes, comps)
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


def best_in_family(model: ConjugateMixtureModel, y: Tensor, objective: str, components: int = 1) -> BranchedNormal | None:
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
        learned, exact_params = net.linear_parameters(), model.exact_linear_parameters()
        metrics["linear"] = {
            name: {"learned": learned[name], "exact": exact_params[name], "abs_error": abs(learned[name] - exact_params[name])}
            for name in learned
        }
    return metrics
