"""Model 1, ``gaussian``: a normal prior on an unknown mean, observed with noise."""

from pydantic import Field

from amortized.models.base import Component, ConjugateMixtureModel, Location, ModelParams, Scale


class GaussianParams(ModelParams):
    mu0: Location = Field(0.0, description="prior mean of x")
    sigma0: Scale = Field(1.0, description="prior standard deviation of x, positive")
    sigma: Scale = Field(1.0, description="observation noise standard deviation, positive")


class GaussianModel(ConjugateMixtureModel):
    """p(x) = N(mu0, sigma0^2), p(y|x) = N(x, sigma^2)."""

    name = "gaussian"
    title = "Gaussian unknown mean"
    description = "x ~ N(mu0, sigma0^2), y ~ N(x, sigma^2); the posterior is normal with mean linear in y."
    Params = GaussianParams
    params: GaussianParams

    def components(self) -> list[Component]:
        return [Component(1.0, self.params.mu0, self.params.sigma0, {})]

    def exact_linear_parameters(self) -> dict[str, float]:
        """a*, b*, c* of q(x|y) = N(a y + b, c^2); c* is a standard deviation (docs/science.md)."""
        p = self.params
        lam = 1 / p.sigma0**2 + 1 / p.sigma**2
        return {"a": (1 / p.sigma**2) / lam, "b": (p.mu0 / p.sigma0**2) / lam, "c": lam**-0.5}
