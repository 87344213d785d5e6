"""KL divergences between a posterior and q, over all latents: what scoring and serving both report.

kl_pq = KL(p || q) and kl_qp = KL(q || p) per observation, in nats
(docs/science.md, "Scores of a compiled network"). In closed form when each
branch of p is one normal; for ``gmm`` (p(x | b, y) a mixture within the
branch) by quadrature of E[log p(b, x)] under single normals, in compiled
loops (:func:`expected_log_density`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from amortized.arrays import Array, logsumexp
from amortized.compiled import compiled
from amortized.distributions import LOG_SQRT_2PI, BranchedNormal, lib
from amortized.models import ConjugateMixtureModel


def normal_kl(mean_p: Array, std_p: Array, mean_q: Array, std_q: Array) -> Array:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) in closed form."""
    ratio = std_p / std_q
    return 0.5 * (ratio**2 + ((mean_p - mean_q) / std_q) ** 2 - 1.0) - lib(ratio).log(ratio)


QUADRATURE_POINTS = 801  # per component, over +-12 standard deviations
QUADRATURE_GRID = np.linspace(-12.0, 12.0, QUADRATURE_POINTS)
# Under one of p's own components, log p(b, x) is smooth on the component's scale: 101 points give 1e-10
# (measured against 4001); q's normal may straddle the sharp switch between p's modes and needs the fine grid.
COMPONENT_GRID = np.linspace(-10.0, 10.0, 101)


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


def dense_expected_log_density(*arrays: np.ndarray) -> np.ndarray:
    """What :func:`expected_log_density` computes, from the same arguments, as whole-array NumPy.

    For scoring, where a compile step in every worker would cost more than it saves.
    """
    centres, widths, centre_branch, log_weights, means, stds, membership, grid, grid_weights = arrays
    x = centres[..., None] + widths[..., None] * grid  # (rows, normals, points)
    z = (x[..., None] - means[:, None, None, :]) / stds[:, None, None, :]
    terms = (log_weights - np.log(stds) - LOG_SQRT_2PI)[
        :, None, None, :
    ] - 0.5 * z * z  # (rows, normals, points, components)
    # the components of each normal's branch
    inside = np.asarray(membership)[:, np.asarray(centre_branch)].T[None, :, None, :]
    with np.errstate(divide="ignore"):
        return logsumexp(np.where(inside, terms, -math.inf), -1) @ grid_weights


def kl_divergences(
    model: ConjugateMixtureModel,
    exact: BranchedNormal,
    q: BranchedNormal,
    grid: np.ndarray = QUADRATURE_GRID,
    dense: bool = False,
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
    density_expectation: Callable[..., np.ndarray] = dense_expected_log_density if dense else expected_log_density
    model = getattr(model, "base", model)  # a mixture network's view of the model: the model's own tables
    if q.num_branches > model.table(exact.means).membership.shape[1]:
        return _mixture_kl_divergences(model, exact, q, grid, density_expectation)
    if model.family_contains_posterior and not dense:  # the request path: the closed forms in one compiled pass
        return closed_form_kls(exact.arrays(), q.arrays())
    if model.family_contains_posterior:
        kl_pq = (
            exact.probs * (exact.log_probs - q.log_probs + normal_kl(exact.means, exact.stds, q.means, q.stds))
        ).sum(-1)
        kl_qp = (q.probs * (q.log_probs - exact.log_probs + normal_kl(q.means, q.stds, exact.means, exact.stds))).sum(
            -1
        )
        return kl_pq, kl_qp
    t = model.table(exact.means)
    membership, branch_of, branches = t.membership > 0, t.component_branch, np.arange(q.num_branches)
    p = exact.arrays()
    if not dense:  # the request path: both KLs in one compiled pass
        grids = (COMPONENT_GRID, expectation_weights(COMPONENT_GRID), grid, expectation_weights(grid))
        return marginal_kls(p, q.arrays(), branch_of, membership, *grids)

    def expected_log_p(
        centres: np.ndarray, widths: np.ndarray, centre_branch: np.ndarray, points: np.ndarray
    ) -> np.ndarray:
        centres, widths = (np.ascontiguousarray(a, dtype=np.float64) for a in (centres, widths))
        return density_expectation(centres, widths, centre_branch, *p, membership, points, expectation_weights(points))

    mu, sigma = q.means[:, branch_of], q.stds[:, branch_of]  # q's normal in each component's branch
    cross = (
        q.log_probs[:, branch_of]
        - np.log(sigma)
        - LOG_SQRT_2PI
        - ((exact.means - mu) ** 2 + exact.stds**2) / (2 * sigma**2)
    )
    kl_pq = (exact.probs * (expected_log_p(exact.means, exact.stds, branch_of, COMPONENT_GRID) - cross)).sum(-1)
    entropy = np.log(q.stds) + 0.5 * math.log(2 * math.pi * math.e)
    kl_qp = (q.probs * (q.log_probs - entropy - expected_log_p(q.means, q.stds, branches, grid))).sum(-1)
    return kl_pq, kl_qp


@compiled
def closed_form_kls(p: tuple[np.ndarray, ...], q: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """KL(p || q) and KL(q || p) per row when each branch of p and q is one normal, branch by branch ``(rows, b)``.

    sum_b p_b (log p_b - log q_b + KL(N_p,b || N_q,b)) and its mirror: the NumPy expressions of
    :func:`kl_divergences` (:func:`normal_kl`) in the same order, up to the rounding of ``exp`` and ``log``.
    ``p`` and ``q``: (log probabilities, means, stds).
    """
    (p_log_probs, p_means, p_stds), (q_log_probs, q_means, q_stds) = p, q
    rows, branches = p_means.shape
    kl_pq, kl_qp = np.empty(rows), np.empty(rows)
    for r in range(rows):
        forward, backward = 0.0, 0.0
        for b in range(branches):
            ratio = p_stds[r, b] / q_stds[r, b]
            offset = (p_means[r, b] - q_means[r, b]) / q_stds[r, b]
            between = 0.5 * (ratio * ratio + offset * offset - 1.0) - math.log(ratio)
            term = math.exp(p_log_probs[r, b]) * (p_log_probs[r, b] - q_log_probs[r, b] + between)
            forward = forward + term if b else term
            ratio = q_stds[r, b] / p_stds[r, b]
            offset = (q_means[r, b] - p_means[r, b]) / p_stds[r, b]
            between = 0.5 * (ratio * ratio + offset * offset - 1.0) - math.log(ratio)
            term = math.exp(q_log_probs[r, b]) * (q_log_probs[r, b] - p_log_probs[r, b] + between)
            backward = backward + term if b else term
        kl_pq[r], kl_qp[r] = forward, backward
    return kl_pq, kl_qp


def _mixture_kl_divergences(
    model: ConjugateMixtureModel, exact: BranchedNormal, q: BranchedNormal, grid: np.ndarray, density_expectation=None
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
    p, qs = exact.arrays(), q.arrays()

    def expected(centres, widths, centre_branch, density, member, points):
        centres, widths = (np.ascontiguousarray(a, dtype=np.float64) for a in (centres, widths))
        return (density_expectation or expected_log_density)(
            centres, widths, centre_branch, *density, member, points, expectation_weights(points)
        )

    kl_pq = (
        exact.probs
        * (
            expected(p[1], p[2], branch_of, p, membership, COMPONENT_GRID)
            - expected(p[1], p[2], branch_of, qs, q_membership, grid)
        )
    ).sum(-1)
    per_normal = expected(qs[1], qs[2], q_branch, qs, q_membership, grid) - expected(
        qs[1], qs[2], q_branch, p, membership, grid
    )
    probs = q.probs
    kl_qp = np.where(probs > 0, probs * per_normal, 0.0).sum(-1)
    return kl_pq, kl_qp


@compiled
def expected_log_density(
    centres: np.ndarray,
    widths: np.ndarray,
    centre_branch: np.ndarray,
    log_weights: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    membership: np.ndarray,
    grid: np.ndarray,
    grid_weights: np.ndarray,
) -> np.ndarray:
    """E[log p(b, x)] for x ~ N(centre, width^2), per row and normal.

    sum_t grid_weights[t] log p(b, centre + width grid[t]).

    p(b, x) is a mixture over components (per row: ``log_weights``, ``means``, ``stds``, ``(rows, components)``)
    summed within branch b (``membership`` (components, branches)); normal g sits in branch ``centre_branch[g]``.
    A component more than 37 nats below the largest would not change the sum's last bit: its exp is skipped, and
    the largest's own is 1.
    """
    rows, normals = centres.shape
    components = means.shape[1]
    out, terms = np.empty((rows, normals)), np.empty(components)
    offsets, inverse_stds = np.empty(components), np.empty(components)
    members = np.empty(components, np.int64)
    for r in range(rows):
        component_constants(log_weights[r], stds[r], offsets, inverse_stds)
        for g in range(normals):
            count = branch_members(membership, centre_branch[g], members)
            mixture, quadrature = (offsets, inverse_stds, means[r]), (grid, grid_weights)
            out[r, g] = expectation_under_normal(
                centres[r, g], widths[r, g], members[:count], mixture, quadrature, terms
            )
    return out


@compiled
def component_constants(log_weights: np.ndarray, stds: np.ndarray, offsets: np.ndarray, inverse: np.ndarray) -> None:
    """Per component, log w_c - log s_c - log sqrt(2 pi) and 1 / s_c (written into ``offsets``, ``inverse``)."""
    for c in range(log_weights.shape[0]):
        offsets[c] = log_weights[c] - math.log(stds[c]) - LOG_SQRT_2PI
        inverse[c] = 1.0 / stds[c]


@compiled
def branch_members(membership: np.ndarray, branch: int, members: np.ndarray) -> int:
    """The components in ``branch``, written in order into ``members``; returns how many."""
    count = 0
    for c in range(membership.shape[0]):
        if membership[c, branch]:
            members[count] = c
            count += 1
    return count


@compiled
def expectation_under_normal(
    centre: float, width: float, members: np.ndarray, mixture: tuple, quadrature: tuple, terms: np.ndarray
) -> float:
    """sum_t grid_weights[t] log sum_{c in members} exp(offsets_c - z_c^2 / 2) at x = centre + width grid[t].

    (:func:`expected_log_density` for one normal: ``mixture`` is (offsets, inverse_stds, means) per component,
    z_c = (x - means_c) * inverse_stds_c; ``quadrature`` is (grid, grid_weights); ``terms``: scratch.)
    """
    offsets, inverse_stds, means = mixture
    grid, grid_weights = quadrature
    total = 0.0
    for t in range(grid.shape[0]):
        x = centre + width * grid[t]
        largest, top = -np.inf, 0
        for i in range(members.shape[0]):
            c = members[i]
            z = (x - means[c]) * inverse_stds[c]
            terms[i] = offsets[c] - 0.5 * z * z
            if terms[i] > largest:
                largest, top = terms[i], i
        summed = 1.0  # the largest term's exp(0)
        for i in range(members.shape[0]):
            below = terms[i] - largest  # not terms[i] > largest - 37: at |largest| > 1e17 that is largest
            if i != top and below > -37.0:
                summed += math.exp(below)
        total += grid_weights[t] * (largest + (math.log(summed) if summed != 1.0 else 0.0))
    return total


@compiled
def marginal_kls(
    p: tuple[np.ndarray, ...],
    q: tuple[np.ndarray, ...],
    component_branch: np.ndarray,
    membership: np.ndarray,
    component_grid: np.ndarray,
    component_weights: np.ndarray,
    grid: np.ndarray,
    grid_weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kl_divergences` where p's branches are mixtures and q's single normals, per row, in one pass.

    ``p`` ``(rows, components)`` and ``q`` ``(rows, branches)``: (log probabilities, means, stds). The same terms
    in the same order as the NumPy expressions there: KL(p || q) sums, over p's components, w_c (E_c[log p(b_c, x)]
    - cross_c) with the cross term of q's normal in the component's branch; KL(q || p) sums q_b (log q_b - H_b -
    E_b[log p(b, x)]); each expectation by :func:`expectation_under_normal` (p's own components on
    ``component_grid``, q's on ``grid``).
    """
    (p_log_probs, p_means, p_stds), (q_log_probs, q_means, q_stds) = p, q
    rows, components = p_means.shape
    branches = q_means.shape[1]
    kl_pq, kl_qp = np.empty(rows), np.empty(rows)
    terms, offsets, inverse_stds = np.empty(components), np.empty(components), np.empty(components)
    members = np.empty(components, np.int64)
    half_log_2_pi_e = 0.5 * math.log(2 * math.pi * math.e)
    wide = (grid, grid_weights)
    for r in range(rows):
        component_constants(p_log_probs[r], p_stds[r], offsets, inverse_stds)
        mixture = (offsets, inverse_stds, p_means[r])
        forward = 0.0
        for c in range(components):
            b = component_branch[c]
            count = branch_members(membership, b, members)
            own = (component_grid, component_weights)
            expected = expectation_under_normal(p_means[r, c], p_stds[r, c], members[:count], mixture, own, terms)
            mu, sigma = q_means[r, b], q_stds[r, b]
            offset = p_means[r, c] - mu
            cross = (
                q_log_probs[r, b]
                - math.log(sigma)
                - LOG_SQRT_2PI
                - (offset * offset + p_stds[r, c] * p_stds[r, c]) / (2 * (sigma * sigma))
            )
            term = math.exp(p_log_probs[r, c]) * (expected - cross)
            forward = forward + term if c else term
        backward = 0.0
        for b in range(branches):
            count = branch_members(membership, b, members)
            expected = expectation_under_normal(q_means[r, b], q_stds[r, b], members[:count], mixture, wide, terms)
            entropy = math.log(q_stds[r, b]) + half_log_2_pi_e
            term = math.exp(q_log_probs[r, b]) * (q_log_probs[r, b] - entropy - expected)
            backward = backward + term if b else term
        kl_pq[r], kl_qp[r] = forward, backward
    return kl_pq, kl_qp
