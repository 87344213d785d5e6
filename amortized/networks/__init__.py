"""The registry of inference-network families, and each model's default (the seed's choice)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from amortized.models import ConjugateMixtureModel
from amortized.networks.base import InferenceNetwork
from amortized.networks.branched_mlp import BranchedMLPNetwork, tanh_through_sigmoid
from amortized.networks.linear_gaussian import LinearGaussianNetwork

FAMILIES: dict[str, type[InferenceNetwork]] = {cls.family: cls for cls in (LinearGaussianNetwork, BranchedMLPNetwork)}
MLP_ARCHITECTURE: dict[str, Any] = {"family": "branched_mlp", "hidden": [64, 64], "activation": "tanh"}
# The seed's families: three scalars for gaussian; small MLPs for every other model (and any new one).
DEFAULT_ARCHITECTURE: dict[str, dict[str, Any]] = {"gaussian": {"family": "linear_gaussian"}}


# Options a family may take beyond its architecture's defaults (training.family_options in a manifest).
FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {
    "branched_mlp": ("mixture_components", "input_gain"),
    "linear_gaussian": (),
}


def network_family(model_family: str) -> str:
    """The network family a model family compiles to by default (``linear_gaussian`` for gaussian, else the MLP's)."""
    return str(DEFAULT_ARCHITECTURE.get(model_family, MLP_ARCHITECTURE)["family"])


def check_family_options(family: str, options: Iterable[str]) -> None:
    """Raise ValueError naming the first of ``options`` the network ``family`` does not take, and those it takes."""
    takes = FAMILY_OPTIONS.get(family, ())
    for name in options:
        if name not in takes:
            raise ValueError(f"the {family} family takes no option {name!r}; it takes: {', '.join(takes) or 'none'}")


def build_network(
    model: ConjugateMixtureModel,
    architecture: dict[str, Any] | None = None,
    family_options: dict[str, Any] | None = None,
) -> InferenceNetwork:
    """A freshly initialised network of ``architecture`` (the model's default if None) for ``model``.

    ``family_options`` (for example ``{"mixture_components": 2}``) override the
    architecture's keyword arguments; an option the family does not take is an error.
    """
    spec = dict(architecture or DEFAULT_ARCHITECTURE.get(model.name, MLP_ARCHITECTURE))
    family = spec.pop("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; known: {', '.join(FAMILIES)}")
    check_family_options(family, family_options or {})
    spec.update(family_options or {})
    return FAMILIES[family](model, **spec)


__all__ = [
    "DEFAULT_ARCHITECTURE",
    "FAMILIES",
    "FAMILY_OPTIONS",
    "MLP_ARCHITECTURE",
    "InferenceNetwork",
    "build_network",
    "check_family_options",
    "network_family",
    "tanh_through_sigmoid",
]
