"""Calibration: quantiles, coverage and the SBC test.

Against scipy and against the exact posterior (calibrated by construction).
"""

import numpy as np
import pytest
import torch
from scipy import stats

from amortized import calibration
from amortized.distributions import BranchedNormal
from amortized.evaluation import TEST_SEED, best_in_family
from amortized.models import MODELS, build_model


def test_mixture_quantiles_invert_the_cdf():
    q = BranchedNormal(
        torch.log(torch.tensor([[0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)),
        torch.tensor([[-5.0, 4.0], [0.0, 1e3]], dtype=torch.float64),
        torch.tensor([[1.0, 2.0], [0.1, 3.0]], dtype=torch.float64),
    )
    levels = [0.025, 0.25, 0.5, 0.9, 0.975]
    x = calibration.mixture_quantiles(q, levels)
    probs, means, stds = (t.numpy() for t in (q.probs, q.means, q.stds))
    cdf = (probs[:, None, :] * stats.norm.cdf(x.numpy()[..., None], means[:, None, :], stds[:, None, :])).sum(-1)
    np.testing.assert_allclose(cdf, np.broadcast_to(levels, cdf.shape), atol=1e-12)


def test_chi_square_p_value_is_scipys():
    ranks = torch.tensor(np.random.default_rng(0).integers(0, 100, 1000))
    ours = calibration.chi_square_uniformity(ranks, 100, 20)
    counts = np.bincount(ranks.numpy() // 5, minlength=20)
    theirs = stats.chisquare(counts)
    assert ours["counts"] == counts.tolist() and ours["dof"] == 19
    assert ours["statistic"] == pytest.approx(theirs.statistic) and ours["p_value"] == pytest.approx(
        theirs.pvalue, rel=1e-9
    )


@pytest.mark.parametrize("name", MODELS)
def test_the_exact_posterior_is_calibrated(name):
    """q = p: every expected coverage equals its level, and SBC ranks are uniform (the test's p-value is not small)."""
    model = build_model(name)
    sample = model.sample_joint(2000, torch.Generator().manual_seed(TEST_SEED))
    exact = model.exact_posterior(sample.y.double())
    np.testing.assert_allclose(calibration.expected_coverage(exact, exact), calibration.LEVELS, atol=1e-9)
    assert calibration.sbc(exact, sample.x.double())["p_value"] > 1e-3


def test_coverage_of_the_gmm_answers_is_what_their_divergences_predict():
    """Moment matching (pq's optimum) covers too little at 50% and too much at 95%.

    The mode fit (qp's) misses the lighter mode.
    """
    model = build_model("gmm")
    sample = model.sample_joint(1000, torch.Generator().manual_seed(TEST_SEED))
    y = sample.y.double()
    exact = model.exact_posterior(y)
    covering, mode = (best_in_family(model, y, objective) for objective in ("pq", "qp"))
    c50, _, c95 = calibration.expected_coverage(exact, covering)
    assert c50 < 0.45 and c95 > 0.96
    lighter = model.branch_probabilities(exact).shape  # one branch: the lighter mode's mass is the other component's
    light_mass = exact.probs.min(-1).values.mean().item()
    assert lighter == (1000, 1)
    assert calibration.expected_coverage(exact, mode)[2] == pytest.approx(0.95 * (1 - light_mass), abs=0.02)
    ranks = calibration.sbc_ranks(mode, sample.x.double())
    extremes = ((ranks == 0) | (ranks == calibration.SBC_DRAWS)).double().mean().item()
    assert extremes > 0.2  # the other mode's true x rank below or above every draw: the SBC histogram is U-shaped


def test_resampled_answer_of_a_mass_covering_q_is_calibrated():
    """SIR from the moment-matched normal recovers the bimodal posterior: coverage near every level."""
    model = build_model("gmm")
    sample = model.sample_joint(400, torch.Generator().manual_seed(TEST_SEED))
    y = sample.y.double()
    exact = model.exact_posterior(y)
    covering = best_in_family(model, y, "pq").numpy()
    coverage = calibration.resampled_coverage(model, exact, y.numpy(), covering)
    np.testing.assert_allclose(coverage, calibration.LEVELS, atol=0.03)


@pytest.mark.parametrize("name, objective", [("gmm", "pq"), ("gmm_open", "qp"), ("gmm", "mixture")])
def test_resampling_matches_the_request_paths(name, objective):
    """importance_resample gives what analyse(..., resample=True) gives.

    The same weights, so the same coverage up to noise.
    """
    from amortized import mixture
    from amortized.diagnostics import analyse

    model = build_model(name)
    sample = model.sample_joint(300, torch.Generator().manual_seed(TEST_SEED))
    y = sample.y.double()
    exact = model.exact_posterior(y)
    if objective == "mixture":  # two normals per branch, slightly off the posterior's: the view's extended weights
        best = mixture.exact_in_layout(model, exact, 2).numpy()
        q, view = BranchedNormal(best.log_probs, best.means + 0.4, best.stds * 1.3), mixture.view_for(model, 2)
    else:
        q, view = best_in_family(model, y, objective).numpy(), model
        q = BranchedNormal(q.log_probs, q.means + 0.3, q.stds * 1.2)
    ours = calibration.importance_resample(view, y.numpy(), q, 4000, np.random.default_rng(1))
    theirs = analyse(view, y.numpy(), q, 4000, np.random.default_rng(2), resample=True).resampled_x
    # the same distribution of draws: per observation, the share below each exact posterior quartile
    quartiles = calibration.mixture_quantiles(exact, [0.25, 0.5, 0.75]).numpy()
    share = lambda draws: (draws[:, None, :] < quartiles[..., None]).mean(-1)  # noqa: E731
    np.testing.assert_allclose(share(ours), share(theirs), atol=0.08)
    np.testing.assert_allclose(share(ours).mean(0), share(theirs).mean(0), atol=0.01)
