"""The seed's family for ``gaussian``: q(x|y) = N(a y + b, c^2), three scalars."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from amortized.distributions import BranchedNormal
from amortized.networks.base import InferenceNetwork


class LinearGaussianNetwork(InferenceNetwork):
    """phi = (a, b, c); c > 0 is kept as log c so that gradient steps never make it negative."""

    family = "linear_gaussian"

    def __init__(self, model) -> None:
        super().__init__(model)
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))
        self.log_c = nn.Parameter(torch.zeros(()))

    def forward(self, y: Tensor) -> BranchedNormal:
        means = (self.a * y + self.b)[:, None]
        return BranchedNormal(torch.zeros_like(means), means, self.log_c.exp().expand_as(means))

    def numpy(self) -> Callable[[np.ndarray], BranchedNormal]:
        a, b, c = self.linear_parameters().values()

        def forward(y: np.ndarray) -> BranchedNormal:
            means = (a * np.asarray(y, dtype=np.float64) + b)[..., None]
            return BranchedNormal(np.zeros_like(means), means, np.full_like(means, c))

        return forward

    def linear_parameters(self) -> dict[str, float]:
        return {"a": self.a.item(), "b": self.b.item(), "c": self.log_c.exp().item()}
