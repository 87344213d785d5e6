"""What the four models share: a conjugate mixture observed through Gaussian noise.

Every model (docs/science.md) is p(c) N(x; mu_c, s_c^2) N(y; x, sigma^2) over a
finite set of prior components c. They differ only in the components and in
which discrete choices are *latents* (kept in the posterior, like z in
``gmm_discrete``) or marginalised (the mixture component of ``gmm``). So one
class gives all of them vectorised sampling, the log joint, the exact
posterior and the exact evidence; a model module only lists its components.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Annotated, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from amortized import compiled as scalar
from amortized.arrays import Array, finite_or_zero, lib, like, logsumexp
from amortized.compiled import compiled
from amortized.distributions import LOG_SQRT_2PI, BranchedNormal, normal_log_prob


class Component(NamedTuple):
    """One prior component: p(c), x | c ~ N(mean, std^2), and the latent values naming it."""

    weight: float
    mean: float
    std: float
    latents: dict[str, int]


class ComponentTable(NamedTuple):
    """The prior components and their conjugate constants, as float64 arrays of one library."""

    log_weights: Array
    means: Array
    stds: Array
    predictive_stds: Array  # sqrt(s_c^2 + sigma^2): y | c
    posterior_variances: Array  # 1 / (1 / s_c^2 + 1 / sigma^2): x | c, y
    posterior_stds: Array
    component_branch: Array
    branch_component: Array
    membership: Array  # (components, branches), 1.0 where the component belongs to the branch

    @staticmethod
    def build(model: ConjugateMixtureModel, torch_arrays: bool) -> ComponentTable:
        variances = 1.0 / (1.0 / model.stds**2 + 1.0 / model.sigma**2)
        membership = (model.component_branch[:, None] == torch.arange(model.num_branches)).to(torch.float64)
        columns = (
            model.log_weights,
            model.means,
            model.stds,
            torch.sqrt(model.stds**2 + model.sigma**2),
            variances,
            variances.sqrt(),
            model.component_branch,
            model.branch_component,
            membership,
        )
        return ComponentTable(*(columns if torch_arrays else (c.numpy() for c in columns)))


class LatentValues(NamedTuple):
    """The discrete latents' values as columns.

    ``membership`` (branches, columns) is 1.0 where a branch carries the column's value; ``groups`` lists each
    latent's name, its values and its columns' slice.
    """

    membership: np.ndarray
    groups: list[tuple[str, list[int], slice]]


class JointSample(NamedTuple):
    """Draws of (branch, x, y) from the joint; ``branch`` indexes ``model.branches``."""

    branch: Tensor
    x: Tensor
    y: Tensor


# Limits of every model's layout and numbers (README, "Variants"). The request path weighs every draw against
# every prior component, so its cost grows with them; the compile recipes were tuned on 1 to 6 components.
MAX_COMPONENTS = 16  # prior components in all (gmm_open: summed over its universes)
MAX_UNIVERSES = 8  # values of k in gmm_open
MAX_ABS_LOCATION = 1e6  # |mean| of a component or prior
MAX_SCALE = 1e6  # standard deviations and the observation noise sigma
# ... and at least this: 1 / s^2 and s^2 stay ordinary floats with room to spare, and float32 networks can still
# express such a std (1e-200 made 1 / s^2 divide by zero: a 500 on POST /v1/models, a rescan that failed whole)
MIN_SCALE = 1e-6
WEIGHT_SUM_TOLERANCE = 1e-6  # relative: weights and probabilities must sum to 1 within it

# strict: numbers only (an int is a number), never a string or a boolean read as one ("1", true)
Location = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_LOCATION, le=MAX_ABS_LOCATION)]
Scale = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=MIN_SCALE, le=MAX_SCALE)]
Probability = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)]


def check_sums_to_one(values: list[float], what: str) -> list[float]:
    total = math.fsum(values)
    if not math.isclose(total, 1.0, rel_tol=WEIGHT_SUM_TOLERANCE):
        raise ValueError(f"{what} must sum to 1 (they sum to {total:.10g})")
    return values


class ModelParams(BaseModel):
    """Base of every model's parameters: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MixtureParams(ModelParams):
    """A finite mixture of normals on x, validated once for every model that has one."""

    weights: list[Probability] = Field(
        default=[0.5, 0.5],
        min_length=1,
        max_length=MAX_COMPONENTS,
        description="mixture weights pi_k, positive, summing to 1",
    )
    means: list[Location] = Field(
        default=[-5.0, 5.0], min_length=1, max_length=MAX_COMPONENTS, description="component means mu_k"
    )
    stds: list[Scale] = Field(
        default=[1.0, 1.0],
        min_length=1,
        max_length=MAX_COMPONENTS,
        description="component standard deviations sigma_k, positive",
    )

    @field_validator("weights")
    @classmethod
    def _weights_sum_to_one(cls, weights: list[float]) -> list[float]:
        return check_sums_to_one(weights, "weights")

    @model_validator(mode="after")
    def _same_lengths(self) -> MixtureParams:
        if not len(self.weights) == len(self.means) == len(self.stds):
            lengths = f"{len(self.weights)}, {len(self.means)} and {len(self.stds)}"
            raise ValueError(f"weights, means and stds must have the same length (got {lengths})")
        return self


class ConjugateMixtureModel(ABC):
    """p(c) N(x; mu_c, s_c^2) N(y; x, sigma^2); subclasses name themselves and list components."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[ModelParams]]

    def __init__(self, params: ModelParams | dict | None = None) -> None:
        self.params = self.Params.model_validate(params if params is not None else {})
        components = self.components()
        self.sigma = float(self.params.sigma)  # type: ignore[attr-defined]
        self.branches: list[dict[str, int]] = []
        for component in components:
            if component.latents not in self.branches:
                self.branches.append(component.latents)
        self.latent_names: tuple[str, ...] = tuple(dict.fromkeys(k for b in self.branches for k in b))
        f64 = torch.float64
        self.log_weights = torch.tensor([math.log(c.weight) for c in components], dtype=f64)
        self.means = torch.tensor([c.mean for c in components], dtype=f64)
        self.stds = torch.tensor([c.std for c in components], dtype=f64)
        self.component_branch = torch.tensor([self.branches.index(c.latents) for c in components])
        self.branch_component = torch.argsort(self.component_branch)  # meaningful when one component per branch
        self._converted: dict[tuple, tuple] = {}  # _constants_like's and _score_layout's cache, per dtype
        self._tables = {lib_is_torch: ComponentTable.build(self, lib_is_torch) for lib_is_torch in (True, False)}
        weights = self.log_weights.exp()
        self.x_loc = float((weights * self.means).sum())
        self.x_scale = math.sqrt(float((weights * (self.stds**2 + (self.means - self.x_loc) ** 2)).sum()))  # centred
        self.y_loc, self.y_scale = self.x_loc, math.hypot(self.x_scale, self.sigma)

    @abstractmethod
    def components(self) -> list[Component]:
        """The prior components, from ``self.params``."""

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @cached_property
    def family_contains_posterior(self) -> bool:
        """True when each branch holds one component: the exact posterior is then a BranchedNormal over branches.

        Read a few times per answer: computed once (``len`` of a tensor costs about a microsecond).
        """
        return len(self.component_branch) == self.num_branches

    @cached_property
    def latent_values(self) -> LatentValues:
        """Every (discrete latent, value) as a column, and which branches carry it (built once per model)."""
        groups, columns, start = [], [], 0
        for name in self.latent_names:
            values = sorted({b[name] for b in self.branches if name in b})
            columns += [[float(branch.get(name) == value) for branch in self.branches] for value in values]
            groups.append((name, values, slice(start, start + len(values))))
            start += len(values)
        membership = np.array(columns, dtype=np.float64).T if columns else np.zeros((self.num_branches, 0))
        return LatentValues(membership, groups)

    @cached_property
    def log_branch_membership(self) -> np.ndarray:
        """log of which branch each prior component belongs to.

        0 where it does, -inf elsewhere, ``(components, branches)``.
        """
        with np.errstate(divide="ignore"):
            return np.log(self.table(np.zeros(0)).membership)

    def latent_marginals(self, branch_probabilities: np.ndarray) -> np.ndarray:
        """P(latent = value | y) for every column of :attr:`latent_values`.

        Shape ``(batch, columns)``, from ``(batch, branches)``.

        A sum per row, not a matrix product (the per-row rule of amortized/importance/streams.py).
        """
        return (branch_probabilities[:, :, None] * self.latent_values.membership).sum(1)

    def sample_joint(self, num: int, generator: torch.Generator | None = None) -> JointSample:
        """Ancestral samples of (c, x, y), vectorised; float32, as the networks train in it."""
        component = torch.multinomial(self.log_weights.exp(), num, replacement=True, generator=generator)
        noise = torch.randn(2, num, generator=generator, dtype=torch.float64)
        x = self.means[component] + self.stds[component] * noise[0]
        y = x + self.sigma * noise[1]
        return JointSample(self.component_branch[component], x.float(), y.float())

    def table(self, reference: Array) -> ComponentTable:
        """The components as float64 arrays of ``reference``'s library (torch or NumPy)."""
        return self._tables[isinstance(reference, torch.Tensor)]

    def log_joint(self, branch: Array, x: Array, y: Array) -> Array:
        """log p(b, x, y), broadcasting; components of a branch are summed (marginalised)."""
        t, xp = self.table(x), lib(x)
        log_weights, means, stds, sigma = self._constants_like(x)
        if self.family_contains_posterior:  # one component per branch: index it, nothing to sum
            component = t.branch_component[branch]
            log_prior = log_weights[component] + normal_log_prob(x, means[component], stds[component])
        else:
            # components on a leading axis: NumPy reduces a short trailing axis ~20x slower
            leading = (-1,) + (1,) * x.ndim
            per_component = log_weights.reshape(leading) + normal_log_prob(
                x, means.reshape(leading), stds.reshape(leading)
            )
            if self.num_branches > 1:  # with one branch every component is in it
                in_branch = t.component_branch.reshape(leading) == branch
                per_component = xp.where(in_branch, per_component, -math.inf)
            log_prior = logsumexp(per_component, 0)
        return log_prior + normal_log_prob(y, x, sigma)

    def log_joint_and_score(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """log p(b, x, y) and its derivative in x, for x ``(batch, branches, particles)`` at every branch b in order.

        The value is :meth:`log_joint`'s (the same density, rounded differently); the derivative is
        sum_c r_c (mu_c - x) / s_c^2 + (y - x) / sigma^2 with r_c the components' responsibilities within
        branch b. ``y`` is ``(batch, 1, 1)``. For the closed-form gradients of the training losses
        (:class:`amortized.losses.SingleNormalQP`).
        """
        offsets, means, inverse_stds = self._score_layout(x)
        z = (x - means) * inverse_stds
        log_prior = offsets - 0.5 * z * z
        prior_score = -z * inverse_stds
        if not self.family_contains_posterior:  # sum the components of each branch out (-inf: not in the branch)
            per_component = log_prior
            log_prior = torch.logsumexp(per_component, 0)
            prior_score = (torch.exp(per_component - log_prior) * prior_score).sum(0)
        w = (y - x) / self.sigma
        log_p = log_prior - 0.5 * w * w - (math.log(self.sigma) + LOG_SQRT_2PI)
        return log_p, prior_score + w / self.sigma

    def _score_layout(self, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The prior components against q's branches in ``reference``'s dtype, built once per dtype.

        (offsets, means, inverse stds) broadcasting against x ``(batch, branches, particles)``: offsets are
        log p(c) - log s_c - log sqrt(2 pi), -inf where component c is not in branch b. With one component per
        branch they are ``(1, branches, 1)`` in branch order; otherwise the components lead,
        ``(components, 1, branches, 1)``, to be summed out.
        """
        key = ("score", reference.dtype)
        if key not in self._converted:
            t = self.table(reference)
            offsets = t.log_weights - t.stds.log() - LOG_SQRT_2PI
            if self.family_contains_posterior:
                order = t.branch_component
                columns = (offsets[order], t.means[order], 1 / t.stds[order])
                layout = tuple(c.reshape(1, -1, 1).to(reference.dtype) for c in columns)
            else:
                member = t.membership.reshape(len(offsets), 1, -1, 1) > 0
                masked = torch.where(member, offsets.reshape(-1, 1, 1, 1), -math.inf)
                layout = tuple(
                    c.to(reference.dtype)
                    for c in (masked, t.means.reshape(-1, 1, 1, 1), 1 / t.stds.reshape(-1, 1, 1, 1))
                )
            self._converted[key] = layout
        return self._converted[key]

    def _constants_like(self, reference: Array) -> tuple[Array, Array, Array, Array]:
        """log p(c), mu_c, s_c and sigma in ``reference``'s library and dtype, converted once per dtype.

        The training loss calls :meth:`log_joint` on float32 tensors at every step.
        """
        key = (isinstance(reference, torch.Tensor), reference.dtype)
        if key not in self._converted:
            t = self.table(reference)
            self._converted[key] = tuple(like(v, reference) for v in (t.log_weights, t.means, t.stds, self.sigma))
        return self._converted[key]

    def log_evidence(self, y: Array) -> Array:
        """Exact log p(y), float64."""
        return self.exact_posterior_and_evidence(y)[1]

    def exact_posterior(self, y: Array) -> BranchedNormal:
        """p(c, x | y) over *components* (float64): w_c(y), and the conjugate N(m_c, s_c^2)."""
        return self.exact_posterior_and_evidence(y)[0]

    def exact_posterior_and_evidence(self, y: Array) -> tuple[BranchedNormal, Array]:
        """Both at once: the evidence is the posterior's normaliser, so it costs nothing more.

        p(c) N(x; mu_c, s_c^2) N(y; x, sigma^2) = p(c) N(y; mu_c, s_c^2 + sigma^2) N(x; m_c(y), v_c).
        A float64 NumPy vector of y (the request path) is answered by :func:`conjugate_posterior`, the same
        arithmetic in one compiled pass.
        """
        t = self.table(y)
        if isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype == np.float64:
            constants = (t.log_weights, t.means, t.stds, t.predictive_stds, t.posterior_variances, t.posterior_stds)
            log_probs, means, stds, log_evidence = conjugate_posterior(np.ascontiguousarray(y), *constants, self.sigma)
            return BranchedNormal(log_probs, means, stds), log_evidence
        y = like(y, t.means)[..., None]
        fit = normal_log_prob(y, t.means, t.predictive_stds)  # log N(y; mu_c, s_c^2 + sigma^2)
        # the prior weights join the fits relative to the best one: where every fit is huge (y 1e6 from the means
        # with stds of 1e-6: fits near -5e23) log p(c) added to the fit itself was rounded away (probabilities of 2)
        xp = lib(fit)
        top = finite_or_zero(fit.amax(-1, keepdim=True) if xp is torch else fit.max(-1, keepdims=True))
        relative = t.log_weights + (fit - top)
        log_normaliser = logsumexp(relative, -1)
        means = t.posterior_variances * (t.means / t.stds**2 + y / self.sigma**2)
        stds = xp.broadcast_to(t.posterior_stds, means.shape)
        posterior = BranchedNormal(relative - log_normaliser[..., None], means, stds)
        return posterior, log_normaliser + top[..., 0]

    def branch_probabilities(self, posterior: BranchedNormal) -> Array:
        """Sum component probabilities into branch probabilities, ``(batch, branches)``."""
        probs = posterior.probs  # a sum per row (the per-row rule of amortized/importance/streams.py)
        return (probs[..., None] * like(self.table(probs).membership, probs)).sum(-2)

    def describe(self) -> dict:
        """Plain data about the model, for manifests and the API."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "latents": [*self.latent_names, "x"],
            "branches": self.branches,
            "params": self.params.model_dump(),
        }


@compiled
def conjugate_posterior(
    y: np.ndarray,
    log_weights: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    predictive_stds: np.ndarray,
    posterior_variances: np.ndarray,
    posterior_stds: np.ndarray,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`ConjugateMixtureModel.exact_posterior_and_evidence` for a vector of y ``(rows,)``, per row.

    Returns log p(c | y), the conjugate means m_c(y) and stds ``(rows, components)``, and log p(y) ``(rows,)``:
    the same operations in the same order as the NumPy expressions there (the fits relative to the largest, a
    stable log-sum-exp), up to the rounding of ``exp`` and ``log`` (libm's here, NumPy's there). On the request
    path those were some twenty NumPy calls on arrays of a few numbers; the tests hold the two together.
    """
    rows, components = y.shape[0], means.shape[0]
    log_probs, posterior_means = np.empty((rows, components)), np.empty((rows, components))
    posterior = np.empty((rows, components))
    log_evidence, fit = np.empty(rows), np.empty(components)
    noise_variance = sigma * sigma
    for r in range(rows):
        top = -np.inf
        for c in range(components):
            z = (y[r] - means[c]) / predictive_stds[c]
            fit[c] = -0.5 * z * z - math.log(predictive_stds[c]) - LOG_SQRT_2PI
            top = scalar.nan_max(fit[c], top) if c else fit[c]
        top = scalar.finite_or_zero(top)
        largest = -np.inf
        for c in range(components):
            fit[c] = log_weights[c] + (fit[c] - top)  # now the relative fit
            largest = scalar.nan_max(fit[c], largest) if c else fit[c]
        largest = scalar.finite_or_zero(largest)
        total = 0.0
        for c in range(components):
            total += math.exp(fit[c] - largest)
        log_normaliser = math.log(total) + largest  # log 0: -inf (NumPy's error model)
        for c in range(components):
            log_probs[r, c] = fit[c] - log_normaliser
            posterior_means[r, c] = posterior_variances[c] * (means[c] / (stds[c] * stds[c]) + y[r] / noise_variance)
            posterior[r, c] = posterior_stds[c]  # the table's, computed once per model
        log_evidence[r] = log_normaliser + top
    return log_probs, posterior_means, posterior, log_evidence
