"""Small MLPs for the mixture models: q(b|y) as a tree of categoricals, q(x|y,b) normal.

The discrete part follows the model's latents in order, one categorical per
node of the tree: ``gmm_discrete`` has q(z|y); ``gmm_open`` has q(k|y) and
q(z|y,k) only where universe k has several components. The continuous part is
the seed's eta_mu(y, b), eta_var(y, b): one MLP fed y and a one-hot of the
branch, evaluated for all branches at once. With one branch (``gmm``) this is
just N(eta1(y), eta2(y)). Inputs and outputs are scaled by the model's prior
moments, since y spans tens for ``gmm``.

The mixture family (``mixture_components`` K > 1) puts K normals in each
model branch: q(b, j | y) = q(b | y) q(j | y, b), q(x | y, b, j) normal. The
discrete head gives K more logits per branch (a softmax within the branch),
the continuous head sees a one-hot of the pair (b, j), and the pair is one
more branch of the BranchedNormal, at index ``b * K + j``. The request path
orders each branch's components by mean (the same distribution; a canonical
labelling for :mod:`amortized.mixture`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from amortized.arrays import Array, lib, logsumexp
from amortized.compiled import compiled, finite_or_zero, nan_max
from amortized.distributions import BranchedNormal
from amortized.models import ConjugateMixtureModel
from amortized.networks.base import InferenceNetwork


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) as 2 sigmoid(2x) - 1, with tanh's own backward, 1 - tanh(x)^2 from the output (torch.func-ready)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Tanh):
    """The hyperbolic tangent, computed by torch's ``tanh`` or, with ``through_sigmoid``, as 2 sigmoid(2x) - 1.

    The same function by two routes. torch's float32 ``tanh`` (Sleef's 1-ulp
    kernel) costs about six times its ``sigmoid`` per element on x86 CPUs
    (2.9 against 0.45 ns on an AVX-512 EPYC), and it was the largest single
    operation of a training step; through the sigmoid, a hidden layer's tanh
    forward takes a third of the time. In float32 the route is within 1.8e-7
    of tanh absolutely (largest at |x| of 3 to 4, where the sigmoid's rounding
    is doubled; torch's own tanh is within 3e-8): an absolute accuracy, which
    is what a unit feeding a weighted sum needs, not a relative one (near 0 the
    error is up to 1.1e-7 whatever x, and x below 3e-8 gives 0). Training
    chooses the route (``TrainingConfig.tanh``, through
    :func:`tanh_through_sigmoid`); evaluation, figures and the request path's
    NumPy forward (``np.tanh``, float64) compute tanh itself.
    """

    through_sigmoid = False

    def forward(self, input: Tensor) -> Tensor:
        return cast(Tensor, _SigmoidTanh.apply(input)) if self.through_sigmoid else torch.tanh(input)


@contextlib.contextmanager
def tanh_through_sigmoid(network: nn.Module, on: bool) -> Iterator[None]:
    """Within the block, every :class:`Tanh` of ``network`` goes through the sigmoid (``on``) or torch's tanh.

    After it, also on an error, torch's tanh: what evaluation and figures compute.
    """
    units = [module for module in network.modules() if isinstance(module, Tanh)]
    for unit in units:
        unit.through_sigmoid = on
    try:
        yield
    finally:
        for unit in units:
            unit.through_sigmoid = False


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


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
# in place: the request path's forward hands each a fresh array of its own (numpy_mlp)
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": lambda h: np.tanh(h, out=h),
    "relu": lambda h: np.maximum(h, 0.0, out=h),
    "silu": lambda h: np.divide(h, 1.0 + np.exp(-h), out=h),
}


def _stacked(tensors: Sequence[Tensor]) -> np.ndarray:
    """Parameters of several networks as one float64 array, a leading axis per network."""
    return np.ascontiguousarray(np.stack([t.detach().double().numpy() for t in tensors]))


def numpy_mlp(stacks: Sequence[nn.Sequential]) -> Layers:
    """Networks of the same layers as one float64 NumPy function (weights copied once), for the request path.

    Inputs are ``(networks, ..., features)``, each network's rows on its own
    leading item. The linear layers are :func:`affine_rows`, which sums every
    row's products in one fixed order, so a row's result does not depend on
    the other rows (BLAS may round a row differently by batch size); the
    activations are NumPy's (SIMD) on the whole array.
    """
    steps: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []
    for layers in zip(*stacks):
        if isinstance(layers[0], nn.Linear):  # (networks, in, out) and (networks, out): one per network
            weight = np.ascontiguousarray(_stacked([layer.weight for layer in layers]).transpose(0, 2, 1))
            steps.append((weight, _stacked([layer.bias for layer in layers])))
        else:
            steps.append(
                NUMPY_ACTIVATIONS[next(name for name, cls in ACTIVATIONS.items() if isinstance(layers[0], cls))]
            )

    copy = not isinstance(steps[0], tuple)  # the activations write in place: never into the caller's array

    def apply(inputs: np.ndarray) -> np.ndarray:
        shape = inputs.shape[:-1]
        inputs = (np.array if copy else np.ascontiguousarray)(inputs).reshape(shape[0], -1, inputs.shape[-1])
        for step in steps:
            inputs = affine_rows(inputs, *step) if isinstance(step, tuple) else step(inputs)
        return inputs.reshape(len(inputs), *shape[1:], inputs.shape[-1])

    return apply


@compiled
def affine_rows(inputs: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``inputs @ weight + bias`` per network.

    Shapes: ``(networks or 1, rows, in)``, ``(networks, in, out)``, ``(networks, out)``.

    Each output sums its row's products in input order, then adds the bias:
    one fixed order per row, whatever the other rows, and a loop over the
    outputs that the compiler vectorises. For the request path's small
    networks (64 units) this is a few microseconds, where a BLAS call per
    row (what kept rows independent before) cost about one each.
    """
    rows, features = inputs.shape[1], inputs.shape[2]
    networks, width = weight.shape[0], weight.shape[2]
    out = np.zeros((networks, rows, width))
    for n in range(networks):
        item = n if inputs.shape[0] == networks else 0  # one item of inputs: every network's (broadcast)
        for r in range(rows):
            for k in range(features):
                value = inputs[item, r, k]
                for j in range(width):
                    out[n, r, j] += value * weight[n, k, j]
            for j in range(width):
                out[n, r, j] += bias[n, j]
    return out


def numpy_branched_mlp(stacks: Sequence[nn.Sequential], num_branches: int) -> Layers:
    """``layers`` fed [y, one-hot(b)] for every branch b, in NumPy.

    ``(networks, stack, batch, 1) -> (networks, stack, batch, branches, outputs)``.

    The first layer's one-hot part is a constant per branch, added once
    (weights copied now), instead of multiplying a one-hot per row.
    """
    first_layers = [cast(nn.Linear, layers[0]) for layers in stacks]
    weight, bias = _stacked([layer.weight for layer in first_layers]), _stacked([layer.bias for layer in first_layers])
    y_column = weight[:, None, None, None, :, 0]  # (networks, 1, 1, 1, hidden)
    # (networks, 1, 1, branches, hidden)
    per_branch = (weight[:, :, 1:].transpose(0, 2, 1) + bias[:, None, :])[:, None, None]
    rest = numpy_mlp([cast(nn.Sequential, layers[1:]) for layers in stacks])

    def apply(u: np.ndarray) -> np.ndarray:
        hidden = u[..., None] * y_column + per_branch  # (networks, stack, batch, branches, hidden)
        networks, stack = hidden.shape[:2]
        out = rest(hidden.reshape(networks, stack, -1, hidden.shape[-1]))  # rows of one stack item together
        return out.reshape(*hidden.shape[:-1], -1)

    return apply


def sort_components(q: BranchedNormal, components: int) -> BranchedNormal:
    """The same mixture with each model branch's ``components`` normals ordered by mean (NumPy, any leading axes)."""
    shape = (*q.means.shape[:-1], q.means.shape[-1] // components, components)
    order = np.argsort(q.means.reshape(shape), -1, kind="stable")
    return BranchedNormal(
        *(
            np.take_along_axis(np.reshape(a, shape), order, -1).reshape(q.means.shape)
            for a in (q.log_probs, q.means, q.stds)
        )
    )


class CategoricalTree(NamedTuple):
    """q(b|y) as a tree of categoricals over the model's latents, in index form.

    ``group_slots`` lists each sibling group's nodes, padded with ``num_nodes``
    (the index of a -inf column appended to the logits), so that one
    logsumexp normalises every group at once; ``node_group`` says which group
    a node is in; ``membership`` which nodes lie on each branch's path.
    """

    group_slots: Array  # (groups, largest group), long
    node_group: Array  # (nodes,), long
    membership: Array  # (nodes, branches), float


def categorical_tree(branches: list[dict[str, int]], latent_names: Sequence[str]) -> CategoricalTree:
    """The tree of categoricals whose leaves are ``branches`` (one path of latent values each)."""
    nodes: dict[tuple, int] = {}
    groups: dict[tuple, list[int]] = {}
    paths: list[list[int]] = []
    for branch in branches:
        path: list[int] = []
        prefix: tuple = ()
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
    """log q(b|y) per branch ``(..., branches)``: a log-softmax within each sibling group, summed along each path.

    NumPy logits (the request path) go through :func:`compiled_tree_log_probs`, the same arithmetic in one pass.
    """
    if isinstance(logits, np.ndarray):
        rows = np.ascontiguousarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
        out = compiled_tree_log_probs(rows, tree.group_slots, tree.node_group, tree.membership)
        return out.reshape(*logits.shape[:-1], out.shape[-1])
    xp = lib(logits)
    padded = xp.concatenate([logits, xp.full_like(logits[..., :1], -math.inf)], -1)[..., tree.group_slots]
    node_log_probs = logits - logsumexp(padded, -1)[..., tree.node_group]
    # a sum per row (the per-row rule of amortized/importance/streams.py)
    return (node_log_probs[..., :, None] * tree.membership).sum(-2)


@compiled
def compiled_tree_log_probs(
    logits: np.ndarray, group_slots: np.ndarray, node_group: np.ndarray, membership: np.ndarray
) -> np.ndarray:
    """:func:`tree_log_probs` for NumPy logits ``(rows, nodes)``, a row at a time: ``(rows, branches)``.

    The same operations in the same order (each group's log-sum-exp over its
    slots shifted by their largest, a padding slot adding exp(-inf) = 0; the
    path sums in node order), up to the rounding of ``exp`` and ``log``
    (libm's here, NumPy's there). The NumPy expressions were a dozen calls on
    arrays of a few numbers; the tests hold the two together.
    """
    rows, nodes = logits.shape
    groups, width = group_slots.shape
    branches = membership.shape[1]
    out, group_lse = np.empty((rows, branches)), np.empty(groups)
    for r in range(rows):
        for g in range(groups):
            top = -np.inf
            for i in range(width):
                slot = group_slots[g, i]
                value = logits[r, slot] if slot < nodes else -np.inf
                top = nan_max(value, top) if i else value
            top = finite_or_zero(top)
            total = 0.0
            for i in range(width):
                slot = group_slots[g, i]
                total += math.exp((logits[r, slot] if slot < nodes else -np.inf) - top)
            group_lse[g] = math.log(total) + top
        for n in range(nodes):
            node_log_prob = logits[r, n] - group_lse[node_group[n]]
            for b in range(branches):  # the first node's term starts the sum, as NumPy's sum does
                term = node_log_prob * membership[n, b]
                out[r, b] = out[r, b] + term if n else term
    return out


class BranchedMLPNetwork(InferenceNetwork):
    family = "branched_mlp"
    branch_onehot: Tensor  # a buffer (register_buffer), which the checker would see as Tensor | Module

    def __init__(
        self,
        model: ConjugateMixtureModel,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        mixture_components: int = 1,
        input_gain: float = 1.0,
    ) -> None:
        super().__init__(model)
        if mixture_components < 1:
            raise ValueError(f"mixture_components must be at least 1, got {mixture_components}")
        self.hidden, self.activation, self.components = list(hidden), activation, int(mixture_components)
        self.input_gain = float(input_gain)
        self.model_branches = model.num_branches
        self.num_branches = model.num_branches * self.components  # q's branches: (model branch, component) pairs
        self.y_loc, self.y_scale = model.y_loc, model.y_scale
        self.x_loc, self.x_scale = model.x_loc, model.x_scale
        self.tree = categorical_tree(model.branches, model.latent_names)
        self.register_buffer("branch_onehot", torch.eye(self.num_branches), persistent=False)
        logits = (len(self.tree.membership) if model.num_branches > 1 else 0) + (
            self.num_branches if self.components > 1 else 0
        )
        self.discrete = mlp(1, hidden, logits, activation) if logits else None
        self.continuous = mlp(1 + self.num_branches, hidden, 2, activation)
        # the scaled y enters with its first-layer weights divided: the same function at start
        if self.input_gain != 1.0:
            with torch.no_grad():
                for head in (self.discrete, self.continuous):
                    if head is not None:
                        cast(nn.Linear, head[0]).weight[:, 0] /= self.input_gain

    def forward(self, y: Tensor) -> BranchedNormal:
        return self.forward_parts([y], [None])[0]

    def forward_parts(self, ys: Sequence[Tensor], columns: Sequence[Tensor | None]) -> list[BranchedNormal]:
        """q at several batches in one pass of each head, the continuous head only at the branches asked for.

        Part i is q(. | ys[i]) at the q-branches ``columns[i]`` (``(batch_i, m_i)``
        long; None: every branch). The discrete head runs on every observation
        (log q(b|y) needs all its logits); the continuous head on one row per
        (observation, asked branch): the pq loss needs only the sampled branch
        (a third of the rows with three branches).
        """
        sizes = [len(y) for y in ys]
        u = self._scaled(ys[0] if len(ys) == 1 else torch.cat(list(ys)))
        head = self.discrete
        log_probs = self._branch_log_probs(u, None if head is None else run(head, u), self.tree)
        nb, onehot = self.num_branches, self.branch_onehot
        # every branch of every observation (with one branch, a single column is that branch)
        if all(wanted is None or (nb == 1 and wanted.shape[-1] == 1) for wanted in columns):
            inputs = torch.cat([u[:, None, :].expand(len(u), nb, 1), onehot.expand(len(u), nb, nb)], -1)
            q = BranchedNormal(log_probs, *self._normals(run(self.continuous, inputs)))
            ends = list(itertools.accumulate(sizes))
            return [q] if len(ys) == 1 else [q[end - size : end] for size, end in zip(sizes, ends)]
        rows = []  # y's column beside a one-hot of each wanted branch, one row per (observation, branch)
        for part, wanted in zip(u.split(sizes), columns):
            chosen = onehot.expand(len(part), nb, nb) if wanted is None else onehot[wanted]
            rows.append(torch.cat([part[:, None, :].expand(-1, chosen.shape[1], 1), chosen], -1).reshape(-1, nb + 1))
        means, stds = self._normals(run(self.continuous, torch.cat(rows)))
        counts = [len(r) for r in rows]
        return [
            BranchedNormal(lp if wanted is None else lp.gather(-1, wanted), m.view(n, -1), s.view(n, -1))
            for lp, m, s, wanted, n in zip(
                log_probs.split(sizes), means.split(counts), stds.split(counts), columns, sizes
            )
        ]

    def numpy(self) -> Callable[[np.ndarray], BranchedNormal]:
        forward = self.numpy_stacked([self])
        return lambda y: forward(y)[0]

    @classmethod
    def numpy_stacked(cls, networks: Sequence[InferenceNetwork]) -> Callable[[np.ndarray], list[BranchedNormal]]:
        """Networks of one architecture for one model, run as one NumPy pass.

        Item i is exactly ``networks[i].numpy()(y)``.

        NumPy's fixed cost per call is most of a small forward's time; stacked, the
        pq and qp networks of a model pay it once.
        """
        first = networks[0]

        def layers(network: InferenceNetwork) -> dict:  # the architecture but the input gain (applied per network)
            return {key: value for key, value in network.architecture().items() if key != "input_gain"}

        if any(not isinstance(n, cls) or layers(n) != layers(first) for n in networks):
            return super().numpy_stacked(networks)
        assert isinstance(first, BranchedMLPNetwork)  # every network is one (checked above)
        same = cast(Sequence[BranchedMLPNetwork], networks)
        # each network's input gain on its own item of the leading axis: u * 1.0 is u, so every item has the bits
        # it has alone (the pq and qp networks of gmm differ in gain only, and share one pass)
        gains = np.array([n.input_gain for n in same])
        gained = bool((gains != 1.0).any())
        discrete = None if first.discrete is None else numpy_mlp([cast(nn.Sequential, n.discrete) for n in same])
        continuous = numpy_branched_mlp([n.continuous for n in same], first.num_branches)
        tree = CategoricalTree(
            first.tree.group_slots.numpy(), first.tree.node_group.numpy(), first.tree.membership.double().numpy()
        )

        def forward(y: np.ndarray) -> list[BranchedNormal]:
            u = first._standardised(np.asarray(y, dtype=np.float64)[None])  # a leading axis for the networks
            if gained:
                u = u * gains.reshape(-1, *[1] * (u.ndim - 1))
            q = first._forward(u, discrete, continuous, tree)
            if discrete is None:  # one branch: log q(b) = 0 for every network
                q = BranchedNormal(np.zeros(q.means.shape), q.means, q.stds)
            if first.components > 1:
                q = sort_components(q, first.components)
            return [q[i] for i in range(len(networks))]

        return forward

    def _forward(self, u: Array, discrete: Layers | None, continuous: Layers, tree: CategoricalTree) -> BranchedNormal:
        """The forward pass from the network's input ``u`` (:meth:`_scaled`), ``(..., batch, 1)``.

        ``continuous`` maps u to (mean, log variance) for every branch
        ``(..., batch, branches, 2)``.
        """
        log_probs = self._branch_log_probs(u, None if discrete is None else discrete(u), tree)
        return BranchedNormal(log_probs, *self._normals(continuous(u)))

    def _standardised(self, y: Array) -> Array:
        """y scaled by the prior moments, ``(..., batch, 1)``."""
        return ((y - self.y_loc) / self.y_scale)[..., None]

    def _scaled(self, y: Array) -> Array:
        """The network's input: y scaled by the prior moments (times the input gain), ``(..., batch, 1)``."""
        u = self._standardised(y)
        return u * self.input_gain if self.input_gain != 1.0 else u

    def _branch_log_probs(self, u: Array, logits: Array | None, tree: CategoricalTree) -> Array:
        """log q(b | y) per q-branch from the discrete head's ``logits`` (None: one branch, log q = 0)."""
        xp = lib(u)
        if logits is None:
            return xp.zeros_like(u)
        if self.components == 1:
            return tree_log_probs(logits, tree)
        # log q(b | y) + log q(j | y, b), laid out b * K + j
        nodes = logits.shape[-1] - self.num_branches
        branch = tree_log_probs(logits[..., :nodes], tree) if nodes else xp.zeros_like(u)
        within = logits[..., nodes:].reshape(*logits.shape[:-1], self.model_branches, self.components)
        within = within - logsumexp(within, -1)[..., None]
        return (branch[..., None] + within).reshape(*logits.shape[:-1], self.num_branches)

    def _normals(self, out: Array) -> tuple[Array, Array]:
        """Means and standard deviations on x from the continuous head's (mean, log variance) outputs ``(..., 2)``."""
        means = self.x_loc + self.x_scale * out[..., 0]
        xp = lib(out)  # NumPy's clip is a Python wrapper around the two ufuncs (several us on the request path)
        bounded = xp.clip(out[..., 1], -30.0, 10.0) if xp is torch else np.minimum(np.maximum(out[..., 1], -30.0), 10.0)
        stds = self.x_scale * xp.exp(0.5 * bounded)
        return means, stds

    def architecture(self) -> dict:
        spec: dict[str, Any] = {"family": self.family, "hidden": self.hidden, "activation": self.activation}
        if self.components > 1:  # the single-normal networks' manifests stay as they were
            spec["mixture_components"] = self.components
        if self.input_gain != 1.0:
            spec["input_gain"] = self.input_gain
        return spec
