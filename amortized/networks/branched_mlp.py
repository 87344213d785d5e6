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

from collections.abc import Callable, Sequence

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
    """The same layers as a float64 NumPy function (weights copied once), for the request path."""
    steps: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            steps.append((layer.weight.detach().numpy().T.astype(np.float64), layer.bias.detach().numpy().astype(np.float64)))
        else:
            steps.append(NUMPY_ACTIVATIONS[next(name for name, cls in ACTIVATIONS.items() if isinstance(layer, cls))])

    def apply(inputs: np.ndarray) -> np.ndarray:
        for step in steps:
            inputs = inputs @ step[0] + step[1] if isinstance(step, tuple) else step(inputs)
        return inputs

    return apply


def categorical_tree(branches: list[dict[str, int]], latent_names: Sequence[str]) -> tuple[list[list[int]], Tensor]:
    """Sibling groups of tree nodes, and which nodes lie on each branch's path (nodes x branches)."""
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
    membership = torch.zeros(len(nodes), len(branches))
    for b, path in enumerate(paths):
        membership[path, b] = 1.0
    return list(groups.values()), membership


class BranchedMLPNetwork(InferenceNetwork):
    family = "branched_mlp"

    def __init__(self, model: ConjugateMixtureModel, hidden: Sequence[int] = (64, 64), activation: str = "tanh") -> None:
        super().__init__(model)
        self.hidden, self.activation = list(hidden), activation
        self.y_loc, self.y_scale = model.y_loc, model.y_scale
        self.x_loc, self.x_scale = model.x_loc, model.x_scale
        groups, membership = categorical_tree(model.branches, model.latent_names)
        self.groups = [torch.tensor(group) for group in groups]
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("branch_onehot", torch.eye(self.num_branches), persistent=False)
        self.discrete = mlp(1, hidden, len(membership), activation) if self.num_branches > 1 else None
        self.continuous = mlp(1 + self.num_branches, hidden, 2, activation)

    def forward(self, y: Tensor) -> BranchedNormal:
        discrete = None if self.discrete is None else lambda u: run(self.discrete, u)
        return self._forward(y, discrete, lambda inputs: run(self.continuous, inputs), self.groups, self.membership, self.branch_onehot)

    def numpy(self) -> Callable[[np.ndarray], BranchedNormal]:
        as_numpy = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
        discrete = None if self.discrete is None else numpy_mlp(self.discrete)
        groups, membership, onehot = [g.numpy() for g in self.groups], as_numpy(self.membership), as_numpy(self.branch_onehot)
        continuous = numpy_mlp(self.continuous)
        return lambda y: self._forward(np.asarray(y, dtype=np.float64), discrete, continuous, groups, membership, onehot)

    def _forward(self, y: Array, discrete: Layers | None, continuous: Layers, groups: list, membership: Array, onehot: Array) -> BranchedNormal:
        """The forward pass, written once for torch (training) and NumPy (serving)."""
        xp = lib(y)
        u = ((y - self.y_loc) / self.y_scale)[:, None]
        batch, nb = len(y), self.num_branches
        if discrete is None:
            log_probs = xp.zeros((batch, 1), dtype=u.dtype)
        else:
            logits = discrete(u)
            node_log_probs = xp.zeros_like(logits)
            for group in groups:  # a log-softmax per sibling group of the categorical tree
                node_log_probs[:, group] = logits[:, group] - logsumexp(logits[:, group])[:, None]
            log_probs = node_log_probs @ membership
        inputs = xp.concatenate([xp.broadcast_to(u[:, None, :], (batch, nb, 1)), xp.broadcast_to(onehot, (batch, nb, nb))], -1)
        out = continuous(inputs)
        means = self.x_loc + self.x_scale * out[..., 0]
        stds = self.x_scale * xp.exp(0.5 * xp.clip(out[..., 1], -30.0, 10.0))
        return BranchedNormal(log_probs, means, stds)

    def architecture(self) -> dict:
        return {"family": self.family, "hidden": self.hidden, "activation": self.activation}
