"""The mixture family (K normals per branch): losses, scores, the request path's weights, and serving over HTTP."""

import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from scipy import special, stats

from amortized import mixture
from amortized.artifacts import load_artifact
from amortized.diagnostics import analyse
from amortized.distributions import BranchedNormal
from amortized.evaluation import best_in_family, kl_divergences
from amortized.losses import loss
from amortized.models import build_model
from amortized.networks import MLP_ARCHITECTURE, build_network
from service.main import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.test_losses import direct_log_joint
from trainer.cli import main

Y = np.array([-20.0, -3.0, 0.0, 0.4, 8.0, 31.0])


def mixture_network(name: str, k: int = 2, seed: int = 3):
    torch.manual_seed(seed)
    model = build_model(name)
    net = build_network(model, MLP_ARCHITECTURE, {"mixture_components": k})
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model, net


def q_arrays(net, y):
    with torch.no_grad():
        q = net(torch.tensor(y, dtype=torch.float32)).to(torch.float64)
    return q.probs.numpy(), q.means.numpy(), q.stds.numpy()


def mixture_log_q(probs, means, stds, k, branch, x):
    """log q(b, x | y) = log sum_j q(b, j | y) N(x; m_bj, s_bj^2), by scipy."""
    rows = np.arange(len(x))[:, None]
    columns = branch[:, None] * k + np.arange(k)
    return special.logsumexp(
        np.log(probs[rows, columns]) + stats.norm.logpdf(x[:, None], means[rows, columns], stds[rows, columns]), axis=-1
    )


def test_options_a_family_does_not_take_are_refused():
    with pytest.raises(ValueError, match="takes no option"):
        build_network(build_model("gaussian"), None, {"mixture_components": 2})
    with pytest.raises(ValueError, match="at least 1"):
        build_network(build_model("gmm"), MLP_ARCHITECTURE, {"mixture_components": 0})


@pytest.mark.parametrize("name", ["gmm", "gmm_open"])
def test_the_mixture_network_is_a_distribution_over_its_branches(name):
    model, net = mixture_network(name, k=3)
    probs, means, stds = q_arrays(net, Y)
    assert probs.shape == (len(Y), model.num_branches * 3) and np.allclose(probs.sum(-1), 1.0)
    assert net.architecture()["mixture_components"] == 3 and (stds > 0).all()
    # the request path's NumPy forward: the same mixture, each branch's components ordered by mean
    served = net.numpy()(Y[None]).flatten()
    grouped = lambda a: np.sort(a.reshape(len(Y), model.num_branches, 3), -1)  # noqa: E731
    np.testing.assert_allclose(grouped(served.means), grouped(means), rtol=1e-5)
    assert (np.diff(served.means.reshape(len(Y), model.num_branches, 3), axis=-1) >= 0).all()


@pytest.mark.parametrize("name", ["gmm", "gmm_discrete"])
def test_pq_loss_uses_the_mixture_density(name):
    model, net = mixture_network(name)
    n = 4000
    sample = model.sample_joint(n, torch.Generator().manual_seed(5))
    probs, means, stds = q_arrays(net, sample.y.double().numpy())
    expected = -mixture_log_q(probs, means, stds, 2, sample.branch.numpy(), sample.x.double().numpy()).mean()
    with torch.no_grad():
        ours = loss("pq", model, net, n, torch.Generator().manual_seed(5)).item()
    assert ours == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["gmm", "gmm_open"])
def test_qp_loss_is_the_expected_log_ratio_of_the_mixture(name):
    model, net = mixture_network(name)
    n = 200_000
    y = model.sample_joint(n, torch.Generator().manual_seed(9)).y.double().numpy()
    probs, means, stds = q_arrays(net, y)
    rng = np.random.default_rng(1)
    pair = (rng.random(n)[:, None] > probs.cumsum(-1)).sum(-1).clip(max=probs.shape[1] - 1)
    rows = np.arange(n)
    x = rng.normal(means[rows, pair], stds[rows, pair])
    terms = mixture_log_q(probs, means, stds, 2, pair // 2, x) - direct_log_joint(model, pair // 2, x, y)
    expected, error = terms.mean(), terms.std() / math.sqrt(n)
    with torch.no_grad():
        ours = loss("qp", model, net, n, torch.Generator().manual_seed(9)).item()
    assert abs(ours - expected) < 5 * error


@pytest.mark.parametrize("name", ["gmm", "gmm_discrete", "gmm_open"])
def test_kl_of_a_repeated_normal_is_the_single_normals(name):
    """A single-normal q written as K = 2 (each normal twice, half the weight) is the same distribution.

    The same KLs.
    """
    model = build_model(name)
    exact = model.exact_posterior(torch.tensor(Y)).numpy()
    single = best_in_family(model, torch.tensor(Y), "pq").numpy()
    single = BranchedNormal(single.log_probs, single.means + 0.3, single.stds * 1.2)
    doubled = mixture.expand_components(single, 2)
    for a, b in zip(kl_divergences(model, exact, single), kl_divergences(model, exact, doubled)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_two_normals_hold_the_gmm_posterior():
    model = build_model("gmm")
    y = torch.tensor(Y)
    best = best_in_family(model, y, "qp", components=2)
    kl_pq, kl_qp = kl_divergences(model, model.exact_posterior(y), best)
    assert kl_pq.abs().max() < 1e-9 and kl_qp.abs().max() < 1e-9
    assert best_in_family(build_model("gmm_open"), y, "pq", components=2) is not None


def test_served_weights_are_uniform_for_the_exact_mixture_and_unbiased_for_any():
    model = build_model("gmm")
    view = mixture.view_for(model, 2)
    exact = model.exact_posterior(torch.tensor(Y))
    best = mixture.exact_in_layout(model, exact, 2).numpy()
    analysis = analyse(view, Y, best, 2000, np.random.default_rng(0))
    log_z = model.log_evidence(Y)
    np.testing.assert_allclose(analysis.log_evidence, log_z, atol=1e-9)
    assert (analysis.ess_fraction > 0.999).all()
    # a poor mixture: mean weight still estimates p(y) (extended-space importance sampling is unbiased)
    _, net = mixture_network("gmm")
    q = net.numpy()(Y[None]).flatten()
    estimates = analyse(
        view,
        np.repeat(Y, 40),
        BranchedNormal(*(np.repeat(a, 40, 0) for a in (q.log_probs, q.means, q.stds))),
        5000,
        np.random.default_rng(1),
    )
    mean_weight = special.logsumexp(estimates.log_evidence.reshape(len(Y), 40), axis=-1) - math.log(40)
    assert np.abs(mean_weight - log_z).max() < 0.1


@pytest.mark.parametrize("name, exact_weights", [("gmm_discrete", True), ("gmm", False)])
def test_a_single_normal_beside_a_mixture_network(name, exact_weights):
    """expand_components: with one prior component per branch the same draws get the same weights; with several
    (gmm) each draw counts only its label's component: the evidence stays unbiased, the ESS drops."""
    model = build_model(name)
    single = best_in_family(model, torch.tensor(Y), "pq").numpy()
    single = BranchedNormal(single.log_probs, single.means + 0.2, single.stds * 1.3)
    alone = analyse(model, Y, single, 4000, np.random.default_rng(3))
    expanded = analyse(
        mixture.view_for(model, 2), Y, mixture.expand_components(single, 2), 4000, np.random.default_rng(3)
    )
    if exact_weights:
        np.testing.assert_allclose(expanded.log_weights, alone.log_weights, atol=1e-9)
    else:
        np.testing.assert_allclose(
            expanded.log_evidence, model.log_evidence(Y), atol=5 * expanded.log_evidence_se.max() + 0.01
        )
        assert (expanded.ess_fraction > 0.3 * alone.ess_fraction).all()


@pytest.fixture(scope="module")
def mixture_artifacts(tmp_path_factory):
    """gmm compiled with K = 2 for both losses (short), beside the committed single-normal gmm_open."""
    root = tmp_path_factory.mktemp("mixture")
    assert (
        main(
            [
                "compile",
                "--model",
                "gmm",
                "--mixture-components",
                "2",
                "--steps",
                "600",
                "--jobs",
                "1",
                "--no-figures",
                "--out",
                str(root),
            ]
        )
        == 0
    )
    shutil.copytree(ARTIFACTS / "gmm_open", root / "gmm_open", ignore=shutil.ignore_patterns("*.png"))
    return root


def test_the_trainer_records_the_family_option(mixture_artifacts):
    manifest = json.loads((mixture_artifacts / "gmm" / "qp.json").read_text())
    # gmm qp's recipe keeps its gain
    assert manifest["training"]["family_options"] == {"mixture_components": 2, "input_gain": 30.0}
    assert manifest["architecture"]["mixture_components"] == 2
    assert set(manifest["metrics"]["calibration"]) >= {"coverage_q", "coverage_resampled", "sbc", "method", "source"}
    assert manifest["metrics"]["limit_qp"] == pytest.approx(0.0, abs=1e-9)
    artifact = load_artifact(mixture_artifacts / "gmm" / "qp.json")
    assert artifact.network.components == 2


def test_a_mixture_artifact_is_served_over_http(mixture_artifacts):
    with TestClient(create_app(Settings(artifacts_dir=mixture_artifacts))) as client:
        ready = client.get("/health/ready").json()
        assert {name: sorted(versions) for name, versions in ready["served"].items()} == {
            "gmm": ["pq", "qp"],
            "gmm_open": ["pq", "qp"],
        }
        assert not ready["refused"]
        detail = client.get("/v1/models/gmm").json()
        assert detail["artifacts"]["pq"]["training"]["family_options"] == {"mixture_components": 2}
        assert "calibration" in detail["artifacts"]["pq"]["metrics"]
        response = client.post(
            "/v1/models/gmm/posterior",
            json={"y": [0.0, 9.0], "objective": "both", "num_samples": 2000, "seed": 4, "resample": True},
        )
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            for answer in result["objectives"].values():
                branches = answer["q"]["branches"]
                assert len(branches) == 2 and all(b["latents"] == {} for b in branches)
                assert sum(b["probability"] for b in branches) == pytest.approx(1.0)
                assert branches[0]["mean"] < 0 < branches[1]["mean"]  # one normal per mode, ordered by mean
                diagnostics = answer["diagnostics"]
                assert (
                    abs(diagnostics["log_evidence"] - answer["exact"]["log_evidence"])
                    < 5 * diagnostics["log_evidence_se"] + 0.02
                )
                assert diagnostics["cross_check"]["consistent"] and not diagnostics["cross_check"]["misses_mass"]
                assert len(answer["resampled"]["x"]) == 2000
        assert client.get("/v1/models/gmm/posterior.png", params={"y": 1.0}).headers["content-type"] == "image/png"
        assert client.post("/v1/models/gmm_open/posterior", json={"y": 2.0, "objective": "both"}).status_code == 200


def test_a_single_normal_and_a_mixture_network_serve_side_by_side(mixture_artifacts, tmp_path):
    """pq from the committed single-normal gmm, qp with K = 2.

    Both answer, laid out with two normals, and cross-check.
    """
    (tmp_path / "gmm").mkdir()
    for path in (ARTIFACTS / "gmm").glob("pq*"):
        shutil.copy(path, tmp_path / "gmm")
    for path in (mixture_artifacts / "gmm").glob("qp*"):
        shutil.copy(path, tmp_path / "gmm")
    with TestClient(create_app(Settings(artifacts_dir=tmp_path))) as client:
        data = client.post(
            "/v1/models/gmm/posterior", json={"y": 3.0, "objective": "both", "num_samples": 1000, "seed": 1}
        ).json()
        pq, qp = data["objectives"]["pq"], data["objectives"]["qp"]
        assert len(pq["q"]["branches"]) == len(qp["q"]["branches"]) == 2
        assert pq["q"]["branches"][0]["mean"] == pq["q"]["branches"][1]["mean"]  # the one normal, twice
        assert pq["diagnostics"]["cross_check"]["other_objective"] == "qp"
        assert abs(qp["diagnostics"]["log_evidence"] - qp["exact"]["log_evidence"]) < 0.05


@pytest.mark.parametrize("name", ["gmm_discrete", "gmm_open"])
@pytest.mark.parametrize("k", [2, 3])
def test_figures_of_a_mixture_network_on_a_model_with_several_branches(name, k):
    """q of K normals per branch on a model of several branches: the figure's branch bars got K x branches heights
    for the model's branches (a 500 on posterior.png, and a failed compile job after its networks were written).
    q(branch | y) is each branch's K slots summed, and every figure draws."""
    from PIL import Image

    from amortized import figures

    model, net = mixture_network(name, k)
    probs, _, _ = q_arrays(net, Y)
    with torch.no_grad():
        q = net(torch.tensor(Y, dtype=torch.float32))
    summed = mixture.model_branch_probabilities(q, model).numpy()
    by_loop = np.array(
        [[probs[i, b * k : (b + 1) * k].sum() for b in range(model.num_branches)] for i in range(len(Y))]
    )
    np.testing.assert_allclose(summed, by_loop, rtol=1e-6)
    assert summed.shape == (len(Y), model.num_branches) and mixture.slots_per_branch(q, model) == k
    odd = model.num_branches * k + 1  # another model's q: not a whole number of slots per branch
    other = BranchedNormal(np.full((1, odd), -math.log(odd)), np.zeros((1, odd)), np.ones((1, odd)))
    with pytest.raises(ValueError, match="not K for each"):
        mixture.slots_per_branch(other, model)
    pngs = [figures.posterior_png(model, 0.4, {"pq": q[3:4], "qp": q[3:4]}, "t")]
    pngs += list(figures.model_figures(model, {"pq": net}, "t").values())
    for png in pngs:
        assert Image.open(io.BytesIO(png)).format == "PNG"
