"""Log densities at a proposal's draws as quadratics in the draw's standard-normal noise.

With x = mean_b + std_b * eps, a normal log density of x is a quadratic in
eps. So once a proposal's branch means and stds are known, every log density
the importance weights need (the proposal's own, another proposal's, the
model's joint) is three coefficients per (observation, branch), combined on
those small arrays and evaluated once per draw by
:func:`amortized.importance.kernels.evaluate_draws`.

The NumPy functions state each quadratic (calibration's whole-array weights use
them, with nothing to compile); :func:`weight_tables` is the request path's
compiled pass over the same arithmetic, which the tests hold to them.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from amortized.compiled import compiled
from amortized.distributions import LOG_SQRT_2PI, BranchedNormal

if TYPE_CHECKING:
    from amortized.models import ConjugateMixtureModel


class NoiseQuadratic(NamedTuple):
    """A log density at x = mean_b + std_b * eps as a function of the standard-normal draw eps: a + b eps + c eps^2.

    Coefficients are
    ``(rows, branches)``, or ``(components, rows, branches)`` for a density
    that is a mixture within a branch (summed, in log space, at evaluation).
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def __sub__(self, other: NoiseQuadratic) -> NoiseQuadratic:
        return NoiseQuadratic(self.a - other.a, self.b - other.b, self.c - other.c)

    def table(self) -> np.ndarray:
        """The coefficients as one C-ordered array ``(components, rows, branches, 3)`` (one component if not a mixture).

        What :func:`amortized.importance.kernels.evaluate_draws` evaluates at each draw.
        """
        shape = np.broadcast_shapes(*(v.shape for v in self))
        table = np.empty((*shape, 3))
        for i, coefficient in enumerate(self):  # filled in place: cheaper than broadcast_arrays + stack on small arrays
            table[..., i] = coefficient
        return table if table.ndim == 4 else table[None]


def normal_log_prob_in_noise(
    mean_x: np.ndarray, std_x: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float
) -> NoiseQuadratic:
    """log N(x; mean, std^2) at x = mean_x + std_x * eps, as a quadratic in eps (broadcasting)."""
    offset, ratio = (mean_x - mean) / std, std_x / std
    return NoiseQuadratic(-0.5 * offset * offset - np.log(std) - LOG_SQRT_2PI, -offset * ratio, -0.5 * ratio * ratio)


def proposal_log_prob(proposal: BranchedNormal) -> NoiseQuadratic:
    """log q(b, x) at the proposal's own draws x = mean_b + std_b * eps.

    log q(b) - log std_b - log sqrt(2 pi) - eps^2 / 2.
    """
    return NoiseQuadratic(
        proposal.log_probs - np.log(proposal.stds) - LOG_SQRT_2PI,
        np.zeros_like(proposal.means),
        np.full_like(proposal.means, -0.5),
    )


def log_prob_at_draws(distribution: BranchedNormal, proposal: BranchedNormal) -> NoiseQuadratic:
    """log of ``distribution`` at (b, x) drawn from ``proposal`` (same branches), as quadratics in the draw's noise."""
    own = normal_log_prob_in_noise(proposal.means, proposal.stds, distribution.means, distribution.stds)
    return NoiseQuadratic(distribution.log_probs + own.a, own.b, own.c)


def joint_log_prob(model: ConjugateMixtureModel, proposal: BranchedNormal, y: np.ndarray) -> NoiseQuadratic:
    """log p(b, x, y) at x = mean_b + std_b * eps drawn from ``proposal``, as quadratics in eps.

    The same density as :meth:`ConjugateMixtureModel.log_joint`: prior
    component and likelihood are each a normal in x. With one component per
    branch the result is ``(rows, branches)``; otherwise each component is
    kept on a leading axis (-inf outside its branch) and summed when evaluated.
    """
    t, means, stds = model.table(proposal.means), proposal.means, proposal.stds
    likelihood = normal_log_prob_in_noise(means, stds, y[:, None], model.sigma)  # N(y; x, sigma^2) as a normal in x
    if model.family_contains_posterior:
        component = t.branch_component
        prior = normal_log_prob_in_noise(means, stds, t.means[component], t.stds[component])
        return NoiseQuadratic(
            t.log_weights[component] + prior.a + likelihood.a, prior.b + likelihood.b, prior.c + likelihood.c
        )
    leading = (-1, 1, 1)
    prior = normal_log_prob_in_noise(means, stds, t.means.reshape(leading), t.stds.reshape(leading))
    # -inf outside a component's branch; a mixture network's view puts log rho(j | c) there (amortized.mixture)
    a = model.log_branch_membership[:, None, :] + t.log_weights.reshape(leading) + prior.a + likelihood.a
    return NoiseQuadratic(a, prior.b + likelihood.b, prior.c + likelihood.c)


def noise_slots(model: ConjugateMixtureModel) -> tuple[np.ndarray, np.ndarray]:
    """Which prior component each slot of :func:`joint_log_prob`'s leading axis takes in each branch, and its offset.

    ``(slots, branches)`` int64 and float64: with one component per branch one
    slot, the branch's component, offset 0; otherwise a slot per component,
    offset ``model.log_branch_membership`` (-inf outside its branch). Built
    once per model (a weak reference: a reloaded model's go with it).
    """
    slots = _SLOTS.get(model)
    if slots is None:
        t = model.table(np.zeros(0))
        if model.family_contains_posterior:
            component = np.ascontiguousarray(t.branch_component[None, :], dtype=np.int64)
            offset = np.zeros(component.shape)
        else:
            offset = np.ascontiguousarray(model.log_branch_membership, dtype=np.float64)
            component = np.ascontiguousarray(np.broadcast_to(np.arange(len(offset))[:, None], offset.shape))
        slots = _SLOTS[model] = (component, offset)
    return slots


_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weight_tables(
    model: ConjugateMixtureModel, proposal: BranchedNormal, y: np.ndarray, other: BranchedNormal | None
) -> tuple[np.ndarray, np.ndarray]:
    """log p(b, x, y) - log q(b, x) and log o(b, x) - log q(b, x) at q's draws, as tables of quadratics in the noise.

    ``(joint_log_prob(model, q, y) - proposal_log_prob(q)).table()`` and
    ``(log_prob_at_draws(other, q) - proposal_log_prob(q)).table()`` (``(0,
    rows, branches, 3)`` without ``other``), the same arithmetic in one
    compiled pass (:func:`quadratic_tables`): on the request path the NumPy
    expressions were some forty calls on arrays of a few numbers each.
    """
    t = model.table(proposal.means)
    component, offset = noise_slots(model)
    rows, width = proposal.means.shape
    others = (other.log_probs, other.means, other.stds) if other is not None else (np.empty((0, rows, width)),) * 3
    return quadratic_tables(
        *(np.ascontiguousarray(a, dtype=np.float64) for a in (proposal.log_probs, proposal.means, proposal.stds, y)),
        float(model.sigma),
        t.log_weights,
        t.means,
        t.stds,
        component,
        offset,
        *(np.ascontiguousarray(a, dtype=np.float64).reshape(-1, rows, width) for a in others),
    )


@compiled
def quadratic_tables(
    log_probs: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    y: np.ndarray,
    sigma: float,
    component_log_weights: np.ndarray,
    component_means: np.ndarray,
    component_stds: np.ndarray,
    slot_component: np.ndarray,
    slot_offset: np.ndarray,
    other_log_probs: np.ndarray,
    other_means: np.ndarray,
    other_stds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weight_tables`'s loop: per (row, branch), the coefficients (a, b, c) of each quadratic, less q's own.

    The same operations in the same order as the NumPy functions above
    (:func:`normal_log_prob_in_noise` and its callers), so the same numbers
    up to the rounding of ``log`` (libm's here, NumPy's there).
    """
    rows, width = means.shape
    slots, others = slot_component.shape[0], other_means.shape[0]
    joint, ratio = np.empty((slots, rows, width, 3)), np.empty((others, rows, width, 3))
    log_sigma = math.log(sigma)
    for r in range(rows):
        for b in range(width):
            mean_x, std_x = means[r, b], stds[r, b]
            own_a = log_probs[r, b] - math.log(std_x) - LOG_SQRT_2PI
            offset, scale = (mean_x - y[r]) / sigma, std_x / sigma  # the likelihood N(y; x, sigma^2)
            like_a, like_b, like_c = (
                -0.5 * offset * offset - log_sigma - LOG_SQRT_2PI,
                -offset * scale,
                -0.5 * scale * scale,
            )
            for s in range(slots):
                c = slot_component[s, b]
                std = component_stds[c]
                offset, scale = (mean_x - component_means[c]) / std, std_x / std
                prior_a = -0.5 * offset * offset - math.log(std) - LOG_SQRT_2PI
                joint[s, r, b, 0] = slot_offset[s, b] + component_log_weights[c] + prior_a + like_a - own_a
                joint[s, r, b, 1] = -offset * scale + like_b - 0.0
                joint[s, r, b, 2] = -0.5 * scale * scale + like_c - -0.5
            for o in range(others):
                std = other_stds[o, r, b]
                offset, scale = (mean_x - other_means[o, r, b]) / std, std_x / std
                ratio[o, r, b, 0] = (
                    other_log_probs[o, r, b] + (-0.5 * offset * offset - math.log(std) - LOG_SQRT_2PI) - own_a
                )
                ratio[o, r, b, 1] = -offset * scale - 0.0
                ratio[o, r, b, 2] = -0.5 * scale * scale - -0.5
    return joint, ratio
