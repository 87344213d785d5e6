"""The registry of generative models: add a module, then one line here."""

from amortized.models.base import ConjugateMixtureModel, JointSample
from amortized.models.gaussian import GaussianModel
from amortized.models.gmm import GmmModel
from amortized.models.gmm_discrete import GmmDiscreteModel
from amortized.models.gmm_open import GmmOpenModel

MODELS: dict[str, type[ConjugateMixtureModel]] = {
    cls.name: cls for cls in (GaussianModel, GmmModel, GmmDiscreteModel, GmmOpenModel)
}


def build_model(name: str, params: dict | None = None) -> ConjugateMixtureModel:
    """The model called ``name`` with ``params`` (defaults from docs/science.md where omitted)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return cls(params)


__all__ = ["MODELS", "ConjugateMixtureModel", "JointSample", "build_model"]
