"""The two training objectives of the seed, vectorised over a batch of observations.

``pq`` (inference compilation) needs only samples of the joint; ``qp`` (the
negative ELBO) needs the joint density and reparameterised samples of x, with
the discrete branches summed out exactly: sum_b q(b|y) [log q(b|y) +
E_{q(x|y,b)} (log q(x|y,b) - log p(b,x,y))]. Zero-variance in the discrete
part, and no Python loop over samples or observations.

A network of the mixture family (``components`` K > 1) has K normals per
model branch b, laid out as q-branches ``b * K + j``; both losses then use
the mixture's density q(b, x | y) = sum_j q(b, j | y) N(x; m_bj, s_bj^2),
with the component j enumerated like a branch in ``qp`` (its draws are
reparameterised within each component, the component weights get exact
gradients).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import Tensor

from amortized.distributions import BranchedNormal, normal_log_prob
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

Objective = Literal["pq", "qp"]
OBJECTIVES: tuple[Objective, ...] = ("pq", "qp")
OTHER_OBJECTIVE: dict[str, Objective] = {"pq": "qp", "qp": "pq"}  # the cross-check's second network


def components_of(net: InferenceNetwork) -> int:
    """K, the normals per model branch of ``net``'s q (1 for the single-normal networks)."""
    return getattr(net, "components", 1)


def pq_terms(q: BranchedNormal, x: Tensor) -> Tensor:
    """-log q(b, x | y) per observation, from q at the joint samples' model branch b (its K q-branches) and x.

    ``q`` has the K q-branches of each sample's model branch b (``(batch, K)``:
    :func:`branch_columns`); the mixture's density sums them.
    """
    per = q.log_probs + normal_log_prob(x[:, None], q.means, q.stds)
    return -(per[:, 0] if per.shape[-1] == 1 else torch.logsumexp(per, -1))


def branch_columns(branch: Tensor, components: int = 1) -> Tensor:
    """The q-branches ``b * K + j`` (j < K) of each model branch b: ``(batch,)`` -> ``(batch, K)``."""
    return branch[:, None] if components == 1 else branch[:, None] * components + torch.arange(components)


def qp_terms(model: ConjugateMixtureModel, q: BranchedNormal, y: Tensor, noise: Tensor, components: int = 1) -> Tensor:
    """E_q[log q(b, x | y) - log p(b, x, y)] per observation, q-branches enumerated, x = mean + std * noise."""
    means, stds = q.means[..., None], q.stds[..., None]
    x = means + stds * noise  # (batch, q-branches, particles)
    if components == 1:
        log_q_x = normal_log_prob(x, means, stds)
        model_branch = torch.arange(q.num_branches)
        own = q.log_probs
    else:  # the mixture's density over the K normals of the draw's model branch
        batch, width, particles = x.shape
        grouped = (batch, width // components, 1, 1, components)
        per = q.log_probs.reshape(grouped) + normal_log_prob(
            x.reshape(batch, width // components, components, particles, 1),
            q.means.reshape(grouped),
            q.stds.reshape(grouped),
        )
        log_q_x = torch.logsumexp(per, -1).reshape(batch, width, particles)  # log q(b, x), the branch weight included
        model_branch = torch.arange(q.num_branches) // components
        own = torch.zeros_like(q.log_probs)
    log_p = model.log_joint(model_branch.expand(len(y), -1)[..., None], x, y[:, None, None])
    per_branch = (log_q_x - log_p).mean(-1)
    if q.num_branches == 1:  # q(b|y) = 1: the same value as the sum below, without its operations
        return per_branch[:, 0]
    return (q.probs * (own + per_branch)).sum(-1)


def pq_loss(model: ConjugateMixtureModel, net: InferenceNetwork, batch_size: int, generator: torch.Generator) -> Tensor:
    """E_{p(b,x,y)}[-log q(b, x | y)], estimated on fresh joint samples."""
    return blended_loss({"pq": 1.0}, model, net, batch_size, generator)


def qp_loss(model: ConjugateMixtureModel, net: InferenceNetwork, batch_size: int, generator: torch.Generator) -> Tensor:
    """E_{p(y)} KL-up-to-log p(y): E_q[log q(b,x|y) - log p(b,x,y)], branches enumerated (8 draws of x per branch)."""
    return blended_loss({"qp": 1.0}, model, net, batch_size, generator)


def blended_loss(
    weights: dict[Objective, float],
    model: ConjugateMixtureModel,
    net: InferenceNetwork,
    batch_size: int,
    generator: torch.Generator,
    *,
    num_particles: int = 8,
) -> Tensor:
    """sum_o weights[o] * loss_o, each on its own fresh batch, the network run once on all observations.

    A blend of pq and qp (the continuation schedule) thus costs one forward
    and one backward pass, not two.
    """
    unknown = set(weights) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"unknown objective {sorted(unknown)[0]!r}; choose one of {', '.join(OBJECTIVES)}")
    sample = model.sample_joint(batch_size, generator) if "pq" in weights else None
    y_qp = model.sample_joint(batch_size, generator).y if "qp" in weights else None
    ys: list[Tensor] = []
    columns: list[Tensor | None] = []
    if sample is not None:  # pq needs q only at each sample's branch
        ys.append(sample.y)
        columns.append(branch_columns(sample.branch, components_of(net)))
    if y_qp is not None:
        ys.append(y_qp)
        columns.append(None)
    qs = net.forward_parts(ys, columns)
    total: Tensor | float = 0.0
    if sample is not None:
        total = total + weights["pq"] * pq_terms(qs[0], sample.x).mean()
    if y_qp is not None:
        part = qs[-1]
        noise = torch.randn(batch_size, part.num_branches, num_particles, generator=generator)
        total = total + weights["qp"] * qp_terms(model, part, y_qp, noise, components_of(net)).mean()
    return cast(Tensor, total)  # a tensor whenever ``weights`` names an objective, as every caller's does


def loss(
    objective: Objective, model, net, batch_size: int, generator: torch.Generator, num_particles: int = 8
) -> Tensor:
    """The training loss named by ``objective``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return blended_loss({objective: 1.0}, model, net, batch_size, generator, num_particles=num_particles)
