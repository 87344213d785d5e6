"""The registry of inference-network families, and each model's default (the seed's choice)."""

from __future__ import annotations

from typing import Any

from amortized.models import ConjugateMixtureModel
from amortized.networks.base import InferenceNetwork
from amortized.networks.branched_mlp import BranchedMLPNetwork
from amortized.networks.linear_gaussian import LinearGaussianNetwork

FAMILIES: dict[str, type[InferenceNetwork]] = {
    cls.family: cls for cls in (LinearGaussianNetwork, BranchedMLPNetwork)
}
MLP_ARCHITECTURE: dict[str, Any] = {"family": "branched_mlp", "hidden": [64, 64], "activation": "tanh"}
# The seed's families: three scalars for gaussian; small MLPs for every other model (and any new one).
DEFAULT_ARCHITECTURE: dict[str, dict[str, Any]] = {"gaussian": {"family": "linear_gaussian"}}


def build_network(model: ConjugateMixtureModel, architecture: dict[str, Any] | None = None) -> InferenceNetwork:
    """A freshly initialised network of ``architecture`` (the model's default if None) for ``model``."""
    spec = dict(architecture or DEFAULT_ARCHITECTURE.get(model.name, MLP_ARCHITECTURE))
    family = spec.pop("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](model, **spec)


__all__ = ["DEFAULT_ARCHITECTURE", "FAMILIES", "MLP_ARCHITECTURE", "InferenceNetwork", "build_network"]
