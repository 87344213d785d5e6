"""Model 4, ``gmm_open``: open universe, the number of mixture components k is itself random.

Which latents exist depends on k (stochastic control flow): z exists only in
universes with more than one component. The layout per k is a list, so a
larger universe is one setting away.
"""

import math

from pydantic import Field, field_validator

from amortized.models.base import Component, ConjugateMixtureModel, MixtureParams, ModelParams


class Universe(MixtureParams):
    """One value of k: its prior probability p(k) and its mixture of components."""

    probability: float = Field(..., gt=0, description="p(k)")


DEFAULT_UNIVERSES = [
    Universe(probability=0.5, weights=[1.0], means=[0.0], stds=[1.0]),
    Universe(probability=0.5, weights=[0.5, 0.5], means=[-5.0, 5.0], stds=[1.0, 1.0]),
]


class GmmOpenParams(ModelParams):
    universes: list[Universe] = Field(
        default=DEFAULT_UNIVERSES, min_length=1, description="for k = 1, 2, ...: p(k) and the mixture given k"
    )
    sigma: float = Field(1.0, gt=0, description="observation noise standard deviation")

    @field_validator("universes")
    @classmethod
    def _probabilities_sum_to_one(cls, universes: list[Universe]) -> list[Universe]:
        if not math.isclose(sum(u.probability for u in universes), 1.0, rel_tol=1e-6):
            raise ValueError("universe probabilities must sum to 1")
        return universes


class GmmOpenModel(ConjugateMixtureModel):
    """k ~ p(k); z ~ Discrete(pi^k) when k has several components; x ~ N(mu_kz, s_kz^2); y ~ N(x, sigma^2)."""

    name = "gmm_open"
    title = "Gaussian mixture (open universe)"
    description = "k components (random), z picks one when k > 1, x ~ N(mu_kz, s_kz^2), y ~ N(x, sigma^2)."
    Params = GmmOpenParams

    def components(self) -> list[Component]:
        out = []
        for k, universe in enumerate(self.params.universes, start=1):
            several = len(universe.weights) > 1
            for z, (w, m, s) in enumerate(zip(universe.weights, universe.means, universe.stds)):
                out.append(Component(universe.probability * w, m, s, {"k": k, "z": z} if several else {"k": k}))
        return out
