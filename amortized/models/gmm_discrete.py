"""Model 3, ``gmm_discrete``: the Gaussian mixture with its component z kept as a latent."""

from amortized.models.base import Component, ConjugateMixtureModel
from amortized.models.gmm import GmmParams


class GmmDiscreteModel(ConjugateMixtureModel):
    """z ~ Discrete(pi), x | z ~ N(mu_z, sigma_z^2), y | x ~ N(x, sigma^2)."""

    name = "gmm_discrete"
    title = "Gaussian mixture (non-marginalised)"
    description = "z picks a component, x ~ N(mu_z, sigma_z^2), y ~ N(x, sigma^2); latents z and x."
    Params = GmmParams
    params: GmmParams

    def components(self) -> list[Component]:
        p = self.params
        return [Component(w, m, s, {"z": z}) for z, (w, m, s) in enumerate(zip(p.weights, p.means, p.stds))]
