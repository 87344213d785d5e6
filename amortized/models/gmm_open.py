"""Model 4, ``gmm_open``: open universe, the number of mixture components k is itself random.

Which latents exist depends on k (stochastic control flow): z exists only in
universes with more than one component. The layout per k is a list, so a
larger universe is one setting away.
"""

from pydantic import Field, field_validator

from amortized.models.base import (
    MAX_COMPONENTS,
    MAX_UNIVERSES,
    Component,
    ConjugateMixtureModel,
    MixtureParams,
    ModelParams,
    Probability,
    Scale,
    check_sums_to_one,
)


class Universe(MixtureParams):
    """One value of k: its prior probability p(k) and its mixture of components."""

    probability: Probability = Field(..., description="p(k), positive; the universes' probabilities sum to 1")


DEFAULT_UNIVERSES = [
    Universe(probability=0.5, weights=[1.0], means=[0.0], stds=[1.0]),
    Universe(probability=0.5, weights=[0.5, 0.5], means=[-5.0, 5.0], stds=[1.0, 1.0]),
]


class GmmOpenParams(ModelParams):
    universes: list[Universe] = Field(
        default=DEFAULT_UNIVERSES,
        min_length=1,
        max_length=MAX_UNIVERSES,
        description="for k = 1, 2, ...: p(k) and the mixture given k",
    )
    sigma: Scale = Field(1.0, description="observation noise standard deviation, positive")

    @field_validator("universes")
    @classmethod
    def _probabilities_sum_to_one(cls, universes: list[Universe]) -> list[Universe]:
        check_sums_to_one([u.probability for u in universes], "the universes' probabilities")
        components = sum(len(u.weights) for u in universes)
        if components > MAX_COMPONENTS:
            raise ValueError(f"{components} components in all: at most {MAX_COMPONENTS} (summed over the universes)")
        for i, universe in enumerate(universes):  # a component's prior weight is p(k) pi_kz: its log must exist
            for j, weight in enumerate(universe.weights):
                if not universe.probability * weight > 0.0:
                    raise ValueError(
                        f"universes[{i}]: probability {universe.probability:.6g} times weights[{j}] {weight:.6g} is 0 "
                        "in double precision (below 5e-324): every component's prior weight p(k) x pi_kz must be a "
                        "positive number"
                    )
        return universes


class GmmOpenModel(ConjugateMixtureModel):
    """k ~ p(k); z ~ Discrete(pi^k) when k has several components; x ~ N(mu_kz, s_kz^2); y ~ N(x, sigma^2)."""

    name = "gmm_open"
    title = "Gaussian mixture (open universe)"
    description = "k components (random), z picks one when k > 1, x ~ N(mu_kz, s_kz^2), y ~ N(x, sigma^2)."
    Params = GmmOpenParams
    params: GmmOpenParams

    def components(self) -> list[Component]:
        out = []
        for k, universe in enumerate(self.params.universes, start=1):
            several = len(universe.weights) > 1
            for z, (w, m, s) in enumerate(zip(universe.weights, universe.means, universe.stds)):
                out.append(Component(universe.probability * w, m, s, {"k": k, "z": z} if several else {"k": k}))
        return out
