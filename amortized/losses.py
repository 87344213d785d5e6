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

from amortized.distributions import LOG_SQRT_2PI, BranchedNormal, normal_log_prob
from amortized.focus import Focus, draw_observations
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


class SingleNormalQP(torch.autograd.Function):
    """The qp loss of single-normal networks from q's parameters, with its gradient in closed form.

    The same estimator as :func:`qp_terms` (x = mean + std * noise, branches
    enumerated; its mean over observations), computed without autograd's graph
    of a few dozen small operations: with s(x) = d/dx log p(b, x, y)
    (:meth:`ConjugateMixtureModel.log_joint_and_score`), the
    derivative of E[log q - log p] is -E[s] in the mean, -1/std - E[s noise]
    in the std (log q at its own draw is -noise^2/2 - log std - log sqrt(2 pi)),
    and p_b (log q(b) + f_b + 1) in log q(b | y).
    """

    @staticmethod
    def forward(ctx, log_probs, means, stds, y, noise, model):
        x = means[..., None] + stds[..., None] * noise  # (batch, branches, particles)
        log_p, score = model.log_joint_and_score(x, y[:, None, None])
        log_q = (-0.5 * noise * noise - LOG_SQRT_2PI) - stds.log()[..., None]
        per_branch = (log_q - log_p).mean(-1)
        if means.shape[-1] == 1:  # one branch: q(b|y) = 1
            terms, probs = per_branch[:, 0], None
        else:
            probs = log_probs.exp()
            terms = (probs * (log_probs + per_branch)).sum(-1)
        ctx.save_for_backward(score, noise, stds, probs, log_probs, per_branch)
        return terms.mean()

    @staticmethod
    def backward(ctx, grad):
        score, noise, stds, probs, log_probs, per_branch = ctx.saved_tensors
        weight = grad / len(stds) if probs is None else probs * (grad / len(stds))
        d_means = -score.mean(-1) * weight
        d_stds = -(stds.reciprocal() + (score * noise).mean(-1)) * weight
        d_log_probs = weight * (log_probs + per_branch + 1) if probs is not None and ctx.needs_input_grad[0] else None
        return d_log_probs, d_means, d_stds, None, None, None


class SingleNormalPQ(torch.autograd.Function):
    """The pq loss of single-normal networks, -mean log q(b, x | y) at q's column of each sample's branch.

    :func:`pq_terms`'s mean with its gradient in closed form: with z = (x - mean) / std, -1/n in log q(b|y),
    -z / std / n in the mean and (1 - z^2) / std / n in the std.
    """

    @staticmethod
    def forward(ctx, log_probs, means, stds, x):
        inverse = stds.reciprocal()
        z = (x[:, None] - means) * inverse  # (batch, 1)
        terms = 0.5 * z * z + stds.log() + LOG_SQRT_2PI - log_probs
        ctx.save_for_backward(z, inverse)
        return terms.mean()

    @staticmethod
    def backward(ctx, grad):
        z, inverse = ctx.saved_tensors
        scale = grad / len(z)
        d_means = -z * inverse * scale
        d_log_probs = -scale.expand_as(z) if ctx.needs_input_grad[0] else None
        return d_log_probs, d_means, (1 - z * z) * inverse * scale, None


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
    closed_form: bool = True,
    focus: Focus | None = None,
) -> Tensor:
    """sum_o weights[o] * loss_o, each on its own fresh batch, the network run once on all observations.

    A blend of pq and qp (the continuation schedule) thus costs one forward
    and one backward pass, not two. ``closed_form``: for single-normal networks,
    the losses with closed-form gradients (:class:`SingleNormalPQ`,
    :class:`SingleNormalQP`: the same values and gradients, a fifth fewer
    tensor operations per step and no autograd graph for them); False differentiates :func:`pq_terms` and
    :func:`qp_terms` by autograd (mixtures always are). ``focus``: part of qp's
    observations drawn from a window instead of p(y) (:mod:`amortized.focus`).
    """
    unknown = set(weights) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"unknown objective {sorted(unknown)[0]!r}; choose one of {', '.join(OBJECTIVES)}")
    sample = model.sample_joint(batch_size, generator) if "pq" in weights else None
    y_qp = draw_observations(model, batch_size, generator, focus) if "qp" in weights else None
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
    single = closed_form and components_of(net) == 1
    if sample is not None:
        q = qs[0]
        value = SingleNormalPQ.apply(q.log_probs, q.means, q.stds, sample.x) if single else pq_terms(q, sample.x).mean()
        total = total + weights["pq"] * value
    if y_qp is not None:
        part = qs[-1]
        noise = torch.randn(batch_size, part.num_branches, num_particles, generator=generator)
        value = (
            SingleNormalQP.apply(part.log_probs, part.means, part.stds, y_qp, noise, model)
            if single
            else qp_terms(model, part, y_qp, noise, components_of(net)).mean()
        )
        total = total + weights["qp"] * value
    return cast(Tensor, total)  # a tensor whenever ``weights`` names an objective, as every caller's does


def loss(
    objective: Objective, model, net, batch_size: int, generator: torch.Generator, num_particles: int = 8
) -> Tensor:
    """The training loss named by ``objective``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return blended_loss({objective: 1.0}, model, net, batch_size, generator, num_particles=num_particles)
