"""Log densities at a proposal's draws as quadratics in the draw's standard-normal noise.

With x = mean_b + std_b * eps, a normal log density of x is a quadratic in
eps. So once a proposal's branch means and stds are known, every log density
the importance weights need (the proposal's own, another proposal's, the
model's joint) is three coefficients per (observation, branch), combined on
those small arrays and evaluated once per draw by
:func:`amortized.importance.kernels.evaluate_draws`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

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
