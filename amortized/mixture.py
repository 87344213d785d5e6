"""The mixture family on the request path: K normals per model branch, each one more branch of a BranchedNormal.

A network with ``mixture_components`` K answers a BranchedNormal whose
branches are the pairs (model branch b, component j), at index ``b * K + j``
(:mod:`amortized.networks.branched_mlp`). Training and scoring use the
mixture's own density q(b, x | y) = sum_j q(b, j | y) N(x; m_bj, s_bj^2)
(:mod:`amortized.losses`, :mod:`amortized.evaluation`). The request path
draws (b, j, x) from q and weighs each draw by a density ratio that is a sum
of exponentiated quadratics in the draw's noise (:mod:`amortized.diagnostics`);
the mixture's density is not of that form, so importance sampling runs on
the space extended by the component label j (an auxiliary variable), with
the target

    T(b, j, x | y) = sum_{c in b} p(c, x | y) rho(j | c),     sum_j T(b, j, x | y) = p(b, x | y),

where c runs over the model's prior components in branch b and rho hands
each component to q's components of the same rank (both ordered by mean:
q's by :func:`~amortized.networks.branched_mlp.sort_components`, the
model's by prior mean). Any fixed rho makes the weights T / q unbiased for
p(y) and the resampled (b, x) follow the posterior, and one target serves
every proposal of the model, so the cross-check's defensive mixture stays
valid. This rho makes the weights nearly uniform when q's components sit on
the posterior's (``gmm`` with K = 2: one normal per mode); where the labels
disagree the weights say so (lower ESS, higher k-hat), as for any poor
proposal. Where each branch holds one prior component, rho is uniform and a
single normal repeated K times (:func:`expand_components`, how a
single-normal network is served beside a mixture one) gets exactly its own
weights; where a branch holds several (``gmm``), its draws are weighed
against the component of their label only: still unbiased, but noisier than
the single normal's own weights (about half the ESS on ``gmm``). The exact
marginal weights p(b, x, y) / q(b, x | y) would need the mixture's density
at each draw inside :func:`amortized.diagnostics.weigh`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from amortized.arrays import Array
from amortized.distributions import BranchedNormal
from amortized.models import ConjugateMixtureModel
from amortized.models.base import LatentValues


def components_in_branches(model: ConjugateMixtureModel) -> int:
    """The most prior components any model branch holds (1 where each branch is one normal)."""
    return int(torch.bincount(model.component_branch, minlength=model.num_branches).max())


def contains_posterior(model: ConjugateMixtureModel, components: int) -> bool:
    """True when K normals per branch can hold the exact posterior (every branch has at most K components)."""
    return components_in_branches(model) <= components


def rank_assignment(model: ConjugateMixtureModel, components: int) -> np.ndarray:
    """rho(j | c), ``(prior components, K)``: each branch's components by prior mean share [0, 1) in order, as do q's K.

    rho(j | c) = C_b |[r_c / C_b, (r_c + 1) / C_b) & [j / K, (j + 1) / K)| for the c of rank r_c among the C_b
    of its branch: the identity when C_b = K, uniform when C_b = 1, and each row sums to 1.
    """
    branch, means = model.component_branch.numpy(), model.means.numpy()
    rho = np.zeros((len(branch), components))
    for b in range(model.num_branches):
        members = np.flatnonzero(branch == b)
        members = members[np.argsort(means[members], kind="stable")]
        size = len(members)
        for rank, c in enumerate(members):
            for j in range(components):
                overlap = min((rank + 1) / size, (j + 1) / components) - max(rank / size, j / components)
                rho[c, j] = max(overlap, 0.0) * size
    return rho


def exact_in_layout(model: ConjugateMixtureModel, exact: BranchedNormal, components: int) -> BranchedNormal:
    """The exact posterior (over prior components) as a BranchedNormal of K normals per branch, when it fits.

    Each branch's components fill its slots in order of prior mean; spare slots
    repeat the last component, its weight shared equally among the copies (the
    same distribution). Torch tensors in and out.
    """
    if not contains_posterior(model, components):
        raise ValueError(f"{components} normals per branch cannot hold {model.name}'s posterior")
    branch, means = model.component_branch.tolist(), model.means.tolist()
    slots, shares = [], []
    for b in range(model.num_branches):
        members = sorted((c for c in range(len(branch)) if branch[c] == b), key=lambda c: means[c])
        filled = members + [members[-1]] * (components - len(members))
        copies = filled.count(members[-1])
        slots += filled
        shares += [math.log(copies) if c == members[-1] else 0.0 for c in filled]
    index = torch.tensor(slots)
    share = torch.tensor(shares, dtype=exact.log_probs.dtype)
    return BranchedNormal(exact.log_probs[:, index] - share, exact.means[:, index], exact.stds[:, index])


def expand_components(q: BranchedNormal, components: int) -> BranchedNormal:
    """A q of fewer normals per branch as one of ``components``: each normal repeated, its weight shared (NumPy).

    The same distribution, in the layout of a mixture network, so that a
    single-normal network and a mixture network of one model can be weighed
    and cross-checked against each other.
    """
    return BranchedNormal(
        np.repeat(q.log_probs, components, -1) - math.log(components),
        np.repeat(q.means, components, -1),
        np.repeat(q.stds, components, -1),
    )


class ComponentView:
    """A model as the request path sees it through a q of K normals per branch: q's branches are (b, j) pairs.

    Everything not named here is the model's own (``describe``, the exact
    posterior and evidence, parameters). Branch-indexed tables repeat each
    branch K times, and :attr:`log_branch_membership` gives the extended target T
    of this module's docstring.
    """

    def __init__(self, model: ConjugateMixtureModel, components: int) -> None:
        self.base, self.components = model, components
        self.branches = [dict(branch) for branch in model.branches for _ in range(components)]
        rho = rank_assignment(model, components)  # (prior components, K)
        member = model.table(np.zeros(0)).membership > 0  # (prior components, branches)
        in_slot = np.repeat(member, components, 1)  # (prior components, q-branches)
        with np.errstate(divide="ignore"):
            self.log_rho = np.where(in_slot, np.log(np.tile(rho, model.num_branches)), -math.inf)

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    @property
    def num_branches(self) -> int:
        return self.base.num_branches * self.components

    @property
    def family_contains_posterior(self) -> bool:
        return False

    @property
    def latent_values(self) -> LatentValues:
        """The model's latent-value columns, each branch's row repeated for its K slots."""
        values = self.base.latent_values
        return LatentValues(np.repeat(values.membership, self.components, 0), values.groups)

    # the model's own marginals, run on this view's latent values (over q-branches)
    latent_marginals = ConjugateMixtureModel.latent_marginals

    @property
    def log_branch_membership(self) -> np.ndarray:
        """log rho(j | c) where q-branch (b, j) is in component c's branch b, -inf elsewhere: the extended target T."""
        return self.log_rho

    def branch_probabilities(self, posterior: BranchedNormal) -> Array:
        """The model's branch probabilities, each shared equally among its K slots ``(batch, q-branches)``."""
        probs = self.base.branch_probabilities(posterior)
        repeat = np.repeat if isinstance(probs, np.ndarray) else torch.repeat_interleave
        return repeat(probs, self.components, -1) / self.components


def slots_per_branch(q: BranchedNormal, model: ConjugateMixtureModel) -> int:
    """K, the normals q has in each of the model's branches (1 for a single-normal network).

    q-branch ``b * K + j`` is slot j of the model's branch b (:class:`ComponentView`). Raises ValueError when q's
    branches are not a whole number of slots per branch of ``model`` (q is another model's).
    """
    components, left = divmod(q.num_branches, model.num_branches)
    if left or not components:
        raise ValueError(f"q has {q.num_branches} branches, not K for each of the model's {model.num_branches}")
    return components


def model_branch_probabilities(q: BranchedNormal, model: ConjugateMixtureModel) -> Array:
    """q(branch | y) over the model's branches, ``(batch, model branches)``: each branch's K slots summed."""
    components = slots_per_branch(q, model)
    probs = q.probs
    return probs.reshape(*probs.shape[:-1], model.num_branches, components).sum(-1)


def view_for(model: ConjugateMixtureModel, components: int):
    """The model itself for single-normal networks, its :class:`ComponentView` for K > 1."""
    return model if components == 1 else ComponentView(model, components)


def base_model(model) -> ConjugateMixtureModel:
    """The model behind a :class:`ComponentView` (or the model itself)."""
    return getattr(model, "base", model)
