"""Model 2, ``gmm``: a Gaussian-mixture prior with the component marginalised out."""

from pydantic import Field

from amortized.models.base import Component, ConjugateMixtureModel, MixtureParams, Scale


class GmmParams(MixtureParams):
    sigma: Scale = Field(10.0, description="observation noise standard deviation, positive")


class GmmModel(ConjugateMixtureModel):
    """p(x) = sum_k pi_k N(mu_k, sigma_k^2), p(y|x) = N(x, sigma^2); the only latent is x."""

    name = "gmm"
    title = "Gaussian mixture (marginalised)"
    description = "x from a mixture of normals, y ~ N(x, sigma^2); the posterior is bimodal, q is one normal."
    Params = GmmParams
    params: GmmParams

    def components(self) -> list[Component]:
        p = self.params
        return [Component(w, m, s, {}) for w, m, s in zip(p.weights, p.means, p.stds)]
