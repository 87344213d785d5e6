"""Each loss against a direct Monte Carlo computation of the same expectation, and short trainings that lower it."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from amortized.losses import loss
from amortized.models import MODELS, build_model
from amortized.networks import build_network
from amortized.training import TrainingConfig, compile_network, default_schedule, train


def random_network(name: str, seed: int = 3):
    """A network with random (untrained) weights: a generic q, not the optimum."""
    torch.manual_seed(seed)
    model = build_model(name)
    net = build_network(model)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model, net


def q_parameters(net, y: np.ndarray):
    with torch.no_grad():
        q = net(torch.tensor(y, dtype=torch.float32))
    return q.probs.double().numpy(), q.means.double().numpy(), q.stds.double().numpy()


def direct_log_joint(model, branch: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(b, x, y) from the component table with scipy: sum the components of branch b."""
    weights, means, stds = model.log_weights.exp().numpy(), model.means.numpy(), model.stds.numpy()
    in_branch = model.component_branch.numpy()[None, :] == branch[:, None]
    log_prior = special.logsumexp(np.log(weights) + stats.norm.logpdf(x[:, None], means, stds), b=in_branch, axis=-1)
    return log_prior + stats.norm.logpdf(y, x, model.sigma)


@pytest.mark.parametrize("name", MODELS)
def test_pq_loss_is_the_expected_negative_log_q(name):
    model, net = random_network(name)
    rng = np.random.default_rng(0)
    n = 200_000
    component = rng.choice(len(model.means), n, p=model.log_weights.exp().numpy())
    x = rng.normal(model.means.numpy()[component], model.stds.numpy()[component])
    y = rng.normal(x, model.sigma)
    branch = model.component_branch.numpy()[component]
    probs, means, stds = q_parameters(net, y)
    rows = np.arange(n)
    terms = -(np.log(probs[rows, branch]) + stats.norm.logpdf(x, means[rows, branch], stds[rows, branch]))
    expected, error = terms.mean(), terms.std() / math.sqrt(n)
    with torch.no_grad():
        ours = loss("pq", model, net, n, torch.Generator().manual_seed(5)).item()
    assert abs(ours - expected) < 5 * error * math.sqrt(2)


@pytest.mark.parametrize("name", MODELS)
def test_qp_loss_is_the_expected_log_ratio(name):
    """Direct MC samples the branch too (no enumeration): same expectation, more variance."""
    model, net = random_network(name)
    rng = np.random.default_rng(1)
    n = 200_000
    y = model.sample_joint(n, torch.Generator().manual_seed(9)).y.double().numpy()
    probs, means, stds = q_parameters(net, y)
    branch = (rng.random(n)[:, None] > probs.cumsum(-1)).sum(-1).clip(max=probs.shape[1] - 1)
    rows = np.arange(n)
    x = rng.normal(means[rows, branch], stds[rows, branch])
    log_q = np.log(probs[rows, branch]) + stats.norm.logpdf(x, means[rows, branch], stds[rows, branch])
    terms = log_q - direct_log_joint(model, branch, x, y)
    expected, error = terms.mean(), terms.std() / math.sqrt(n)
    with torch.no_grad():
        ours = loss("qp", model, net, n, torch.Generator().manual_seed(9)).item()
    # the same y (same generator draws) on both sides; ours has lower variance, so the MC error bounds the gap
    assert abs(ours - expected) < 5 * error


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("objective", ["pq", "qp"])
def test_a_short_training_lowers_the_loss(name, objective):
    model = build_model(name)
    torch.manual_seed(0)
    net = build_network(model)

    def held_out() -> float:
        with torch.no_grad():
            return loss(objective, model, net, 20_000, torch.Generator().manual_seed(123)).item()

    before = held_out()
    config = TrainingConfig(
        schedule=default_schedule(objective, 150, warm_start=0, blend=0), batch_size=128, learning_rate=0.02
    )
    train(model, net, config)
    assert held_out() < before - 0.05


def test_training_is_deterministic_for_a_seed():
    def weights(seed: int) -> list[torch.Tensor]:
        model = build_model("gmm_open")
        net, _ = compile_network(model, TrainingConfig(schedule=default_schedule("qp", 40), batch_size=64, seed=seed))
        return [p.detach().clone() for p in net.parameters()]

    first, again, other = weights(4), weights(4), weights(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("components", [1, 2])
def test_the_network_at_chosen_branches_is_the_full_network_there(name, components):
    """forward_parts (the losses' one pass, pq's continuous head only at each sample's branch) against net(y)."""
    model = build_model(name)
    torch.manual_seed(4)
    net = build_network(model, family_options={"mixture_components": components} if name != "gaussian" else None)
    generator = torch.Generator().manual_seed(6)
    y_pq, y_qp = (model.sample_joint(300, generator).y for _ in range(2))
    columns = torch.randint(net.num_branches, (300, 2), generator=generator)
    with torch.no_grad():
        at_columns, every_branch = net.forward_parts([y_pq, y_qp], [columns, None])
        full_pq, full_qp = net(y_pq), net(y_qp)
    for field in ("log_probs", "means", "stds"):
        expected = getattr(full_pq, field).gather(-1, columns)
        torch.testing.assert_close(getattr(at_columns, field), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(getattr(every_branch, field), getattr(full_qp, field), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_closed_form_gradients_are_autograds(name):
    """SingleNormalQP / SingleNormalPQ against autograd through qp_terms / pq_terms (float64): value and gradients."""
    from amortized.distributions import BranchedNormal
    from amortized.losses import SingleNormalPQ, SingleNormalQP, branch_columns, pq_terms, qp_terms

    model = build_model(name)
    generator = torch.Generator().manual_seed(1)
    n, width = 64, model.num_branches
    sample = model.sample_joint(n, generator)
    log_probs = torch.log_softmax(torch.randn(n, width, generator=generator, dtype=torch.float64), -1)
    log_probs.requires_grad_(width > 1)  # one branch: log q(b|y) = 0, no parameter
    means = (3 * torch.randn(n, width, generator=generator, dtype=torch.float64)).requires_grad_()
    stds = (0.3 + torch.rand(n, width, generator=generator, dtype=torch.float64)).requires_grad_()
    noise = torch.randn(n, width, 8, generator=generator, dtype=torch.float64)
    inputs = [t for t in (log_probs, means, stds) if t.requires_grad]
    y = sample.y.double()
    reference = qp_terms(model, BranchedNormal(log_probs, means, stds), y, noise).mean()
    ours = SingleNormalQP.apply(log_probs, means, stds, y, noise, model)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(reference, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)
    column = branch_columns(sample.branch)
    at = [t.gather(-1, column) for t in (log_probs, means, stds)]
    reference = pq_terms(BranchedNormal(*at), sample.x.double()).mean()
    ours = SingleNormalPQ.apply(*at, sample.x.double())
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    grads = torch.autograd.grad(ours, inputs, retain_graph=True), torch.autograd.grad(reference, inputs)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_every_recipe_records_its_arithmetic_and_an_older_manifest_reads_as_autograd_and_torch_tanh():
    from amortized.training import TrainingConfig, recipe

    assert recipe("gmm", "qp").gradients == "autograd" and recipe("gmm", "qp").tanh == "torch"
    assert recipe("gmm", "qp").model_dump()["gradients"] == "autograd"
    assert recipe("gmm", "qp").model_dump()["tanh"] == "torch"
    for name, objective in (("gmm", "pq"), ("gmm_open", "qp"), ("gaussian", "qp"), ("an_unknown_variant", "pq")):
        assert recipe(name, objective).model_dump()["gradients"] == "closed_form"
        assert recipe(name, objective).model_dump()["tanh"] == "sigmoid"
    # a manifest written before the options: no keys, which read back as None (autograd, torch's tanh) and write
    # back without them
    older = recipe("gmm_open", "qp").model_dump()
    del older["gradients"], older["tanh"]
    config = TrainingConfig.model_validate(older)
    assert config.gradients is None and config.tanh is None and config.model_dump() == older
    # keyword arguments override the recipe's arithmetic too (each raised "multiple values for keyword argument")
    assert recipe("gmm_discrete", "pq", tanh="torch", gradients="autograd").model_dump()["tanh"] == "torch"
    assert recipe("gmm", "qp", tanh="sigmoid", gradients="closed_form").gradients == "closed_form"


def test_tanh_through_the_sigmoid_is_tanh_within_2e_7_and_has_tanhs_gradient():
    """The training route 2 sigmoid(2x) - 1 against float64 tanh, over the range a hidden unit sees and its tails."""
    from amortized.networks.branched_mlp import Tanh

    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.tensor([0.0, 1e-30, -1e-8, 88.0, -104.0])]).requires_grad_()
    unit = Tanh()
    unit.through_sigmoid = True
    y = unit(x)
    exact = torch.tanh(x.detach().double())
    assert (y.detach().double() - exact).abs().max().item() < 2e-7
    assert y.dtype == torch.float32 and y.detach().abs().max().item() <= 1.0
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    # tanh's backward, 1 - y^2, from the route's own output; near 0 within float32 rounding of 1 - (2e-7)^2
    torch.testing.assert_close(grad.double(), 1 - y.detach().double() ** 2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), 1 - exact**2, rtol=0, atol=1e-6)
    # torch.func transforms see the same function and gradient
    batch = x.detach()[:1000].reshape(10, 100)
    assert torch.equal(torch.func.vmap(unit)(batch), unit(batch))
    torch.testing.assert_close(torch.func.grad(lambda v: unit(v).sum())(batch), 1 - unit(batch) ** 2, rtol=0, atol=1e-6)
    unit.through_sigmoid = False  # torch's own tanh, to the bit
    assert torch.equal(unit(x.detach()), torch.tanh(x.detach()))


def test_training_routes_tanh_as_its_config_says_and_hands_back_torchs():
    """A compile with tanh "sigmoid" trains through the sigmoid (other weights than torch's tanh gives), and the
    network it returns computes torch's tanh (what evaluation and figures see)."""
    from amortized.networks.branched_mlp import Tanh

    model = build_model("gmm_discrete")
    schedule = default_schedule("pq", 30)
    results = {}
    for route in ("sigmoid", "torch"):
        config = TrainingConfig(schedule=schedule, batch_size=64, seed=1, tanh=route)
        net, _ = compile_network(model, config)
        assert not any(m.through_sigmoid for m in net.modules() if isinstance(m, Tanh))
        results[route] = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert not torch.equal(results["sigmoid"], results["torch"])
    torch.testing.assert_close(results["sigmoid"], results["torch"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("restarts", [1, 2, 3])
def test_the_qp_schedule_splits_every_step_count_into_phases_that_train(restarts):
    """Every total and fraction: the phases' steps add up, none is empty, each part within a step of its share.

    3 steps at warm start 0.5 and blend 0.5 rounded each part up (2 + 2) and failed with a validation error; 1 or 2
    steps listed phases of 0 steps in the manifest.
    """
    fractions = [i / 10 for i in range(11)]
    for steps in range(1, 41):
        for warm_start in fractions:
            for blend in fractions:
                if warm_start + blend > 1:
                    continue
                phases = default_schedule("qp", steps, warm_start, blend, restarts)
                assert sum(p.steps for p in phases) == steps, (steps, warm_start, blend)
                assert all(p.steps > 0 for p in phases), (steps, warm_start, blend)
                warm = sum(p.steps for p in phases if p.objective == "pq")
                blended = sum(p.steps for p in phases if p.blend_from == "pq")
                assert abs(warm - steps * warm_start) <= 0.5 + 1e-9 and abs(blended - steps * blend) <= 1 + 1e-9
                assert [p.objective for p in phases][: 1 if warm else 0] == ["pq"] * (1 if warm else 0)
                assert len([p for p in phases if p.objective == "qp" and p.blend_from is None]) <= restarts
