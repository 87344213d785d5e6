"""The four models: their joint against its definition, and exact posteriors against brute-force integration."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import integrate, stats

from amortized.distributions import BranchedNormal
from amortized.models import MODELS, build_model

OBSERVATIONS = [-12.0, -1.3, 0.0, 0.7, 4.0, 25.0]


def definition_log_joint(name: str, branch: dict, x: float, y: float) -> float:
    """log p(latents, x, y) written straight from docs/science.md with scipy, independent of the package."""
    like = stats.norm.logpdf(y, x, {"gaussian": 1.0, "gmm": 10.0, "gmm_discrete": 10.0, "gmm_open": 1.0}[name])
    if name == "gaussian":
        return stats.norm.logpdf(x, 0, 1) + like
    if name == "gmm":
        return np.logaddexp(*(math.log(0.5) + stats.norm.logpdf(x, m, 1) for m in (-5, 5))) + like
    if name == "gmm_discrete":
        return math.log(0.5) + stats.norm.logpdf(x, (-5, 5)[branch["z"]], 1) + like
    if branch["k"] == 1:
        return math.log(0.5) + stats.norm.logpdf(x, 0, 1) + like
    return math.log(0.5) + math.log(0.5) + stats.norm.logpdf(x, (-5, 5)[branch["z"]], 1) + like


@pytest.mark.parametrize("name", MODELS)
def test_log_joint_matches_the_definition(name):
    model = build_model(name)
    rng = np.random.default_rng(0)
    for b, branch in enumerate(model.branches):
        x, y = rng.normal(0, 6, 20), rng.normal(0, 12, 20)
        ours = model.log_joint(torch.full((20,), b), torch.tensor(x), torch.tensor(y)).numpy()
        reference = [definition_log_joint(name, branch, xi, yi) for xi, yi in zip(x, y)]
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("y", OBSERVATIONS)
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # odd moments that are exactly 0
def test_exact_posterior_matches_numerical_integration(name, y):
    """Integrate p(b, x, y) over x with adaptive quadrature: evidence, p(b|y), and the mean and std of x."""
    model = build_model(name)

    def joint(x: float, b: int) -> float:
        return math.exp(
            model.log_joint(
                torch.tensor(b), torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
            ).item()
        )

    exact = model.exact_posterior(torch.tensor([y]))
    centres = exact.means[0].tolist()
    moments = np.zeros((model.num_branches, 3))
    for b in range(model.num_branches):
        for power in range(3):
            moments[b, power] = integrate.quad(
                lambda x, power=power, b=b: x**power * joint(x, b), -80, 80, points=centres, limit=400, epsabs=0
            )[0]
    evidence = moments[:, 0].sum()
    assert model.log_evidence(torch.tensor([y])).item() == pytest.approx(math.log(evidence), abs=1e-7)
    np.testing.assert_allclose(model.branch_probabilities(exact)[0].numpy(), moments[:, 0] / evidence, atol=1e-9)
    mean = moments[:, 1].sum() / evidence
    std = math.sqrt(moments[:, 2].sum() / evidence - mean**2)
    assert exact.mean_x().item() == pytest.approx(mean, abs=1e-7)
    assert exact.std_x().item() == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_joint_samples_follow_the_model(name):
    """y from sample_joint follows the exact evidence p(y) (KS), and branch frequencies follow p(b|y) on average."""
    model = build_model(name)
    sample = model.sample_joint(20000, torch.Generator().manual_seed(1))
    grid = torch.linspace(-80, 80, 40001, dtype=torch.float64)
    cdf = torch.cumulative_trapezoid(model.log_evidence(grid).exp(), grid)
    y = sample.y.double().numpy()
    assert stats.kstest(y, lambda v: np.interp(v, grid[1:].numpy(), cdf.numpy())).pvalue > 1e-3
    expected = model.branch_probabilities(model.exact_posterior(sample.y.double())).mean(0)
    observed = torch.bincount(sample.branch, minlength=model.num_branches) / len(y)
    np.testing.assert_allclose(observed.numpy(), expected.numpy(), atol=0.015)


def test_gaussian_optimum_is_the_corrected_one():
    """c* is a standard deviation, lam^(-1/2), not the seed's 1/lam."""
    star = build_model("gaussian").exact_linear_parameters()
    assert star["a"] == pytest.approx(0.5) and star["b"] == pytest.approx(0.0)
    assert star["c"] == pytest.approx(0.70711, abs=1e-5)


def test_open_universe_layout_is_one_setting_away():
    universes = [
        {
            "probability": 0.2,
            "weights": [1.0] if k == 1 else [1 / k] * k,
            "means": list(np.linspace(-6, 6, k)) if k > 1 else [0.0],
            "stds": [1.0] * k,
        }
        for k in range(1, 6)
    ]
    model = build_model("gmm_open", {"universes": universes})
    assert model.num_branches == 1 + 2 + 3 + 4 + 5
    assert model.branches[0] == {"k": 1} and model.branches[-1] == {"k": 5, "z": 4}
    assert model.branch_probabilities(model.exact_posterior(torch.tensor([0.3, 7.0]))).sum(
        -1
    ).tolist() == pytest.approx([1, 1])


@pytest.mark.parametrize(
    "name, params",
    [
        ("gaussian", {"sigma0": -1}),
        ("gaussian", {"nonsense": 1}),
        ("gmm", {"weights": [0.3, 0.3]}),
        ("gmm", {"means": [1.0]}),
        ("gmm_open", {"universes": [{"probability": 0.5, "weights": [1.0], "means": [0.0], "stds": [1.0]}]}),
    ],
)
def test_invalid_parameters_are_refused(name, params):
    with pytest.raises(ValidationError):
        build_model(name, params)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="gmm_open"):
        build_model("nope")


@pytest.mark.parametrize("name", MODELS)
def test_numpy_and_torch_give_the_same_numbers(name):
    """The science is written once for both libraries: the request path (NumPy) must agree with training's (torch)."""
    from amortized.divergences import kl_divergences

    model = build_model(name)
    rng = np.random.default_rng(11)
    y = rng.normal(0.0, 8.0, size=7)
    branch = rng.integers(0, model.num_branches, size=(7, 50))
    x = rng.normal(0.0, 6.0, size=(7, 50))
    as_torch = torch.from_numpy
    np.testing.assert_allclose(
        model.log_joint(branch, x, y[:, None]),
        model.log_joint(as_torch(branch), as_torch(x), as_torch(y)[:, None]).numpy(),
        rtol=1e-12,
    )
    exact_np, evidence_np = model.exact_posterior_and_evidence(y)
    exact_t, evidence_t = model.exact_posterior_and_evidence(as_torch(y))
    np.testing.assert_allclose(evidence_np, evidence_t.numpy(), rtol=1e-12)
    for field in ("log_probs", "means", "stds"):
        np.testing.assert_allclose(getattr(exact_np, field), getattr(exact_t, field).numpy(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        model.branch_probabilities(exact_np), model.branch_probabilities(exact_t).numpy(), rtol=1e-12
    )
    nb = model.num_branches  # some q over branches, unlike the posterior
    q = BranchedNormal(np.full((7, nb), -math.log(nb)), exact_np.means[:, :nb] * 0.9, exact_np.stds[:, :nb] * 1.5)
    torch_q = BranchedNormal(*(as_torch(np.ascontiguousarray(a)) for a in (q.log_probs, q.means, q.stds)))
    for a, b in zip(kl_divergences(model, exact_np, q), kl_divergences(model, exact_t, torch_q)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.3, 0.7]])
def test_the_exact_posterior_keeps_the_prior_weights_where_the_fits_are_huge(weights):
    """Means at +-1e6 with stds and sigma at their floor (1e-6): at y = 0 both fits are about -5e23 and equal, so
    p(c | y) is the prior's weights and each component's posterior mean lies halfway between y and its prior mean
    (equal prior and noise variances), at +-5e5; adding log p(c) to a fit of that size rounded it away
    (probabilities of 1 each, 2 in all)."""
    for library in (np.asarray, torch.tensor):
        model = build_model("gmm", {"weights": weights, "means": [-1e6, 1e6], "stds": [1e-6, 1e-6], "sigma": 1e-6})
        posterior, log_evidence = model.exact_posterior_and_evidence(library([0.0, 1e6]))
        probs = np.asarray(posterior.probs)
        np.testing.assert_allclose(probs[0], weights, rtol=1e-12)
        np.testing.assert_allclose(probs[1], [0.0, 1.0], atol=1e-300)
        spread = 1e6 * math.sqrt(weights[0] * weights[1])  # two points 1e6 apart with these weights
        np.testing.assert_allclose(np.asarray(posterior.std_x())[0], spread, rtol=1e-9)
        assert np.isfinite(np.asarray(log_evidence)).all()


@pytest.mark.parametrize("name", [n for n in MODELS if build_model(n).num_branches > 1])
def test_the_compiled_tree_log_probs_are_torchs(name):
    """The request path's q(b | y) from the discrete head's logits (one compiled pass for NumPy logits) against
    torch's float64 log-softmax per sibling group summed along each path: random logits, huge ones, and rows whose
    groups are dominated by one logit (log q(b) near -1e3); stacked leading axes keep their shape."""
    from amortized.networks.branched_mlp import CategoricalTree, categorical_tree, tree_log_probs

    model = build_model(name)
    tree = categorical_tree(model.branches, model.latent_names)
    as_numpy = CategoricalTree(tree.group_slots.numpy(), tree.node_group.numpy(), tree.membership.double().numpy())
    as_torch = CategoricalTree(tree.group_slots, tree.node_group, tree.membership.double())
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 5.0, size=(2, 9, len(tree.membership)))
    logits[0, 0] *= 1e300 / np.abs(logits[0, 0]).max()
    logits[1, 1, 0] = 1e3
    ours = tree_log_probs(logits, as_numpy)
    theirs = tree_log_probs(torch.from_numpy(logits), as_torch).numpy()
    assert ours.shape == theirs.shape == (2, 9, model.num_branches)
    np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.exp(ours[1:]).sum(-1), 1.0, rtol=1e-12)  # a distribution over the branches


def test_the_compiled_moments_of_a_branched_normal_are_its_mean_and_std():
    """BranchedNormal.moments (one compiled pass on NumPy arrays) against mean_x and std_x on the same numbers as
    torch tensors, and against the moments of draws; at a mean of 3e8 with stds near 1 the std stays the branches'
    (a centred sum, no cancellation)."""
    rng = np.random.default_rng(3)
    log_probs = rng.normal(size=(50, 4))
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    means, stds = rng.normal(0.0, 5.0, size=(50, 4)), rng.uniform(0.1, 3.0, size=(50, 4))
    means[0] += 3e8
    q = BranchedNormal(log_probs, means, stds)
    mean, std = q.moments()
    as_torch = BranchedNormal(*(torch.from_numpy(a) for a in (log_probs, means, stds)))
    np.testing.assert_allclose(mean, as_torch.mean_x().numpy(), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(std, as_torch.std_x().numpy(), rtol=1e-12)
    assert 0.1 < std[0] < 30.0
    branch, x = q[1:2].sample(400_000, np.random.default_rng(4))
    assert abs(x.mean() - mean[1]) < 5 * std[1] / math.sqrt(400_000)
    assert x.std() == pytest.approx(std[1], rel=0.01)
    torch_mean, torch_std = as_torch.moments()
    np.testing.assert_array_equal(torch_mean.numpy(), as_torch.mean_x().numpy())
    np.testing.assert_array_equal(torch_std.numpy(), as_torch.std_x().numpy())
