"""What every inference network is: a torch module from observations y to a BranchedNormal."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from amortized.distributions import BranchedNormal
from amortized.models import ConjugateMixtureModel


class InferenceNetwork(nn.Module, ABC):
    """q_phi(b, x | y) for a model; ``architecture()`` plus the weights rebuild it exactly."""

    family: ClassVar[str]
    components: int = 1  # normals per model branch (the mixture family has more)

    def __init__(self, model: ConjugateMixtureModel) -> None:
        super().__init__()
        self.num_branches = model.num_branches

    @abstractmethod
    def forward(self, y: Tensor) -> BranchedNormal:
        """q(. | y) for a batch ``y`` of shape ``(batch,)``."""

    def forward_parts(self, ys: Sequence[Tensor], columns: Sequence[Tensor | None]) -> list[BranchedNormal]:
        """q at several batches in one pass: part i is q(. | ys[i]) at the q-branches ``columns[i]``.

        ``columns[i]`` is ``(batch_i, m_i)`` long, or None for every branch; the
        part's BranchedNormal then has ``m_i`` branches, in that order (the training
        losses' one forward per step). Here one forward of all observations, then
        a gather; a family whose heads can skip the branches not asked for overrides it.
        """
        q = self(ys[0] if len(ys) == 1 else torch.cat(list(ys)))
        parts, start = [], 0
        for y, wanted in zip(ys, columns):
            part, start = q[start : start + len(y)], start + len(y)
            parts.append(part if wanted is None else BranchedNormal(*part.at(wanted)))
        return parts

    @abstractmethod
    def numpy(self) -> Callable[[np.ndarray], BranchedNormal]:
        """The same q(. | y) as a float64 NumPy function of y, weights copied now (the request path).

        ``y`` may be stacked ``(stack, batch)``: each stack item is then computed
        exactly as if it came alone (see :func:`~amortized.networks.branched_mlp.numpy_mlp`).
        """

    @classmethod
    def numpy_stacked(cls, networks: Sequence[InferenceNetwork]) -> Callable[[np.ndarray], list[BranchedNormal]]:
        """Several networks as one NumPy function of y: item i is ``networks[i].numpy()(y)``.

        Here one after the other; a family whose networks can share one pass overrides it.
        """
        forwards = [network.numpy() for network in networks]
        return lambda y: [forward(y) for forward in forwards]

    def architecture(self) -> dict[str, Any]:
        """The constructor's keyword arguments and the family name, as plain data."""
        return {"family": self.family}
