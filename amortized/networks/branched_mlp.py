"""Small MLPs for the mixture models: q(b|y) as a tree of categoricals, q(x|y,b) normal.

The discrete part follows the model's latents in order, one categorical per
node of the tree: ``gmm_discrete`` has q(z|y); ``gmm_open`` has q(k|y) and
q(z|y,k) only where universe k has several components. The continuous part is
the seed's eta_mu(y, b), eta_var(y, b): one MLP fed y and a one-hot of the
branch, evaluated for all branches at once. With one branch (``gmm``) this is
just N(eta1(y), eta2(y)). Inputs and outputs are scaled by the model's prior
moments, since y spans tens for ``gmm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from amortized.arrays import Array, lib, logsumexp
from amortized.distributions import BranchedNormal
from amortized.models import ConjugateMixtureModel
from amortized.networks.base import InferenceNetwork

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def mlp(inputs: int, hidden: Sequence[int], outputs: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), ACTIVATIONS[activation]()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, outputs))


def run(layers: nn.Sequential, inputs: Tensor) -> Tensor:
    """``layers(inputs)`` without nn.Module's per-call hook machinery (a third of a small forward's time)."""
    for layer in layers:
        inputs = layer.forward(inputs)
    return inputs


Layers = Callable[[Array], Array]
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh, "relu": lambda h: np.maximum(h, 0.0), "silu": lambda h: h / (1.0 + np.exp(-h)),
}


def numpy_mlp(layers: nn.Sequential) -> Layers:
    """The same layers as a float64 NumPy function (weights copied once), for the request path.

    Inputs may be stacked ``(stack, rows, features)``: NumPy then multiplies
    each stack item by the same BLAS call as when it comes alone, so an item's
    result does not depend on the others (a 2-D batch of other sizes may be
    rounded differently by BLAS).
    """
    steps: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight = np.ascontiguousarray(layer.weight.detach().double().numpy().T)
            steps.append((weight, layer.bias.detach().double().numpy()))
        else:
            steps.append(NUMPY_ACTIVATIONS[next(name for name, cls in ACTIVATIONS.items() if isinstance(layer, cls))])

    def apply(inputs: np.ndarray) -> np.ndarray:
        for step in steps:
            inputs = inputs @ step[0] + step[1] if isinstance(step, tuple) else step(inputs)
        return inputs

    return apply


def numpy_branched_mlp(layers: nn.Sequential, num_branches: int) -> Layers:
    """``layers`` fed [y, one-hot(b)] for every branch b, in NumPy: ``(..., batch, 1) -> (..., batch, branches, outputs)``.

    The first layer's one-hot part is a constant per branch, added once
    (weights copied now), instead of multiplying a one-hot per row.
    """
    first = layers[0]
    weight, bias = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()
    y_column, per_branch = weight[:, 0].copy(), weight[:, 1:].T + bias  # (hidden,), (branches, hidden)
    rest = numpy_mlp(layers[1:])

    def apply(u: np.ndarray) -> np.ndarray:
        hidden = u[..., None] * y_column + per_branch  # (..., batch, branches, hidden)
        out = rest(hidden.reshape(*u.shape[:-2], -1, hidden.shape[-1]))  # rows of one stack item together
        return out.reshape(*u.shape[:-1], num_branches, -1)

    return apply


class CategoricalTree(NamedTuple):
    """q(b|y) as a tree of categoricals over the model's latents, in index form.

    ``group_slots`` lists each sibling group's nodes, padded with ``num_nodes``
    (the index of a -inf column appended to the logits), so that one
    logsumexp normalises every group at once; ``node_group`` says which group
    a node is in; ``membership`` which nodes lie on each branch's path.
    """

    group_slots: Tensor  # (groups, largest group), long
    node_group: Tensor  # (nodes,), long
    membership: Tensor  # (nodes, branches), float


def categorical_tree(branches: list[dict[str, int]], latent_names: Sequence[str]) -> CategoricalTree:
    """The tree of categoricals whose leaves are ``branches`` (one path of latent values each)."""
    nodes: dict[tuple, int] = {}
    groups: dict[tuple, list[int]] = {}
    paths: list[list[int]] = []
    for branch in branches:
        path, prefix = [], ()
        for name in latent_names:
            if name not in branch:
                continue
            key = (*prefix, (name, branch[name]))
            if key not in nodes:
                nodes[key] = len(nodes)
                groups.setdefault(prefix, []).append(nodes[key])
            path.append(nodes[key])
            prefix = key
        paths.append(path)
    width = max((len(g) for g in groups.values()), default=0)
    group_slots = torch.tensor([g + [len(nodes)] * (width - len(g)) for g in groups.values()], dtype=torch.long)
    node_group = torch.zeros(len(nodes), dtype=torch.long)
    for index, group in enumerate(groups.values()):
        node_group[group] = index
    membership = torch.zeros(len(nodes), len(branches))
    for b, path in enumerate(paths):
        membership[path, b] = 1.0
    return CategoricalTree(group_slots.reshape(len(groups), width), node_group, membership)


def tree_log_probs(logits: Array, tree: CategoricalTree) -> Array:
    """log q(b|y) per branch ``(..., branches)``: a log-softmax within each sibling group, summed along each path."""
    xp = lib(logits)
    padded = xp.concatenate([logits, xp.full_like(logits[..., :1], -math.inf)], -1)[..., tree.group_slots]
    node_log_probs = logits - logsumexp(padded, -1)[..., tree.node_group]
    return (node_log_probs[..., :, None] * tree.membership).sum(-2)  # a sum per row: BLAS may round a row differently by batch size


class BranchedMLPNetwork(InferenceNetwork):
    family = "branched_mlp"

    def __init__(self, model: ConjugateMixtureModel, hidden: Sequence[int] = (64, 64), activation: str = "tanh") -> None:
        super().__init__(model)
        self.hidden, self.activation = list(hidden), activation
        self.y_loc, self.y_scale = model.y_loc, model.y_scale
        self.x_loc, self.x_scale = model.x_loc, model.x_scale
        self.tree = categorical_tree(model.branches, model.latent_names)
        self.register_buffer("branch_onehot", torch.eye(self.num_branches), persistent=False)
        self.discrete = mlp(1, hidden, len(self.tree.membership), activation) if self.num_branches > 1 else None
        self.continuous = mlp(1 + self.num_branches, hidden, 2, activation)

    def forward(self, y: Tensor) -> BranchedNormal:
        discrete = None if self.discrete is None else lambda u: run(self.discrete, u)
        nb = self.num_branches

        def continuous(u: Tensor) -> Tensor:  # y's column beside a one-hot of each branch
            inputs = torch.cat([u[:, None, :].expand(len(u), nb, 1), self.branch_onehot.expand(len(u), nb, nb)], -1)
            return run(self.continuous, inputs)

        return self._forward(y, discrete, continuous, self.tree)

    def numpy(self) -> Callable[[np.ndarray], BranchedNormal]:
        discrete = None if self.discrete is None else numpy_mlp(self.discrete)
        continuous = numpy_branched_mlp(self.continuous, self.num_branches)
        tree = CategoricalTree(self.tree.group_slots.numpy(), self.tree.node_group.numpy(), self.tree.membership.double().numpy())
        return lambda y: self._forward(np.asarray(y, dtype=np.float64), discrete, continuous, tree)

    def _forward(self, y: Array, discrete: Layers | None, continuous: Layers, tree: CategoricalTree) -> BranchedNormal:
        """The forward pass, written once for torch (training) and NumPy (serving).

        ``continuous`` maps the scaled y ``(..., batch, 1)`` to (mean, log
        variance) for every branch ``(..., batch, branches, 2)``.
        """
        xp = lib(y)
        u = ((y - self.y_loc) / self.y_scale)[..., None]
        log_probs = xp.zeros_like(u) if discrete is None else tree_log_probs(discrete(u), tree)
        out = continuous(u)
        means = self.x_loc + self.x_scale * out[..., 0]
        stds = self.x_scale * xp.exp(0.5 * xp.clip(out[..., 1], -30.0, 10.0))
        return BranchedNormal(log_probs, means, stds)

    def architecture(self) -> dict:
        return {"family": self.family, "hidden": self.hidden, "activation": self.activation}
