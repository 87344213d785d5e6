"""The two training objectives of the seed, vectorised over a batch of observations.

``pq`` (inference compilation) needs only samples of the joint; ``qp`` (the
negative ELBO) needs the joint density and reparameterised samples of x, with
the discrete branches summed out exactly: sum_b q(b|y) [log q(b|y) +
E_{q(x|y,b)} (log q(x|y,b) - log p(b,x,y))]. Zero-variance in the discrete
part, and no Python loop over samples or observations.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from amortized.distributions import normal_log_prob
from amortized.models import ConjugateMixtureModel
from amortized.networks import InferenceNetwork

Objective = Literal["pq", "qp"]
OBJECTIVES: tuple[Objective, ...] = ("pq", "qp")
OTHER_OBJECTIVE: dict[str, Objective] = {"pq": "qp", "qp": "pq"}  # the cross-check's second network


def pq_loss(model: ConjugateMixtureModel, net: InferenceNetwork, batch_size: int, generator: torch.Generator) -> Tensor:
    """E_{p(b,x,y)}[-log q(b, x | y)], estimated on fresh joint samples."""
    sample = model.sample_joint(batch_size, generator)
    q = net(sample.y)
    return -q.log_prob(sample.branch[:, None], sample.x[:, None]).mean()


def qp_loss(
    model: ConjugateMixtureModel,
    net: InferenceNetwork,
    batch_size: int,
    generator: torch.Generator,
    num_particles: int = 8,
) -> Tensor:
    """E_{p(y)} KL-up-to-log p(y): E_q[log q(b,x|y) - log p(b,x,y)], branches enumerated."""
    y = model.sample_joint(batch_size, generator).y
    q = net(y)
    noise = torch.randn(batch_size, q.num_branches, num_particles, generator=generator)
    x = q.means[..., None] + q.stds[..., None] * noise
    log_q_x = normal_log_prob(x, q.means[..., None], q.stds[..., None])
    branch = torch.arange(q.num_branches).expand(batch_size, -1)[..., None]
    log_p = model.log_joint(branch, x, y[:, None, None])
    per_branch = (log_q_x - log_p).mean(-1)
    return (q.probs * (q.log_probs + per_branch)).sum(-1).mean()


def loss(objective: Objective, model, net, batch_size: int, generator: torch.Generator, num_particles: int = 8) -> Tensor:
    """The training loss named by ``objective``."""
    if objective == "pq":
        return pq_loss(model, net, batch_size, generator)
    if objective == "qp":
        return qp_loss(model, net, batch_size, generator, num_particles)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
