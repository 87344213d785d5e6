"""Importance diagnostics: k-hat against arviz-stats and the closed form, evidence within its error, honest verdicts."""

import math

import numpy as np
import pytest
import torch
from arviz_stats.base.array import BaseArray
from scipy import stats

from amortized.diagnostics import WeightSummary, analyse, latent_marginals, pareto_k_hat, summarise_weights, verdict
from amortized.distributions import BranchedNormal
from amortized.evaluation import best_in_family
from amortized.models import MODELS, build_model


@pytest.mark.parametrize("num_samples", [60, 1000, 5000])
def test_pareto_k_matches_arviz_stats(num_samples):
    """arviz-stats smooths -ary, so log weights go in negated (as documented by its psislw)."""
    rng = np.random.default_rng(num_samples)
    log_weights = rng.standard_t(3, size=(6, num_samples)) * rng.uniform(0.3, 2.0, size=(6, 1))
    ours = pareto_k_hat(torch.tensor(log_weights)).numpy()
    reference = np.array([BaseArray().psislw(-row)[1] for row in log_weights])
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scale", [1.2, 1.5, 2.0, 3.0])
def test_pareto_k_matches_the_closed_form(scale):
    """Proposal N(0, 1), target N(0, s^2): k = 1 - 1/s^2; finite-sample estimates sit slightly low for large s."""
    x = torch.randn(8, 100_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    log_weights = -0.5 * x**2 / scale**2 - math.log(scale) + 0.5 * x**2
    assert pareto_k_hat(log_weights).mean().item() == pytest.approx(1 - 1 / scale**2, abs=0.1)


def test_weight_summary_formulas():
    log_weights = torch.log(torch.tensor([[1.0, 1.0, 2.0, 4.0]], dtype=torch.float64))
    summary = summarise_weights(log_weights)
    assert summary.log_evidence.item() == pytest.approx(math.log(2.0))
    assert summary.ess.item() == pytest.approx(64 / 22)
    assert summary.elbo.item() == pytest.approx(math.log(8) / 4)


@pytest.mark.parametrize("name", MODELS)
def test_evidence_is_within_three_standard_errors(name):
    """With the best mass-covering member of q's family as proposal, every y."""
    model = build_model(name)
    y = torch.tensor([-9.0, -1.0, 0.0, 2.5, 12.0], dtype=torch.float64)
    q = best_in_family(model, y, "pq")
    if model.family_contains_posterior:  # perturb the exact posterior so the weights are not all equal
        q = BranchedNormal(q.log_probs, q.means + 0.3 * q.stds, q.stds * 1.2)
    result = analyse(model, y, q, 20_000, torch.Generator().manual_seed(3))
    z = (result.log_evidence - model.log_evidence(y)) / result.log_evidence_se
    assert (z.abs() < 3).all(), z


def test_cross_check_catches_a_missed_mode_that_ess_cannot_see():
    """gmm at y = 0: the mode fit looks perfect to ESS and k-hat, yet misses half the mass."""
    model = build_model("gmm")
    y = torch.zeros(1, dtype=torch.float64)
    mode_fit, covering = best_in_family(model, y, "qp"), best_in_family(model, y, "pq")
    result = analyse(model, y, mode_fit, 1000, torch.Generator().manual_seed(0), other=covering)
    assert result.ess_fraction.item() > 0.99
    assert result.log_evidence.item() == pytest.approx(model.log_evidence(y).item() - math.log(2), abs=0.01)
    assert not result.cross_check.consistent.item() and result.cross_check.misses_mass.item()
    assert result.verdict == ["unreliable"] and "misses posterior mass" in result.reason[0]
    truth = model.log_evidence(y).item()
    assert abs(result.cross_check.log_evidence_mixture.item() - truth) < 3 * result.cross_check.log_evidence_mixture_se.item()
    again = analyse(model, y, covering, 1000, torch.Generator().manual_seed(0), other=covering)
    assert again.cross_check.consistent.item() and again.verdict == ["reliable"]
    # the covering q is not blamed for the other's missing mode: the flag is raised, the verdict stays
    covering_first = analyse(model, y, covering, 1000, torch.Generator().manual_seed(0), other=mode_fit)
    assert not covering_first.cross_check.consistent.item() and not covering_first.cross_check.misses_mass.item()
    assert covering_first.verdict == ["reliable"]


def test_nearly_exact_q_does_not_cry_wolf():
    """Weights within a hair of uniform make k-hat noise; the verdict must stay 'reliable'."""
    model = build_model("gmm_discrete")
    y = torch.linspace(-15, 15, 40, dtype=torch.float64)
    exact = model.exact_posterior(y)
    q = BranchedNormal(exact.log_probs, exact.means + 1e-3, exact.stds * 1.001)
    result = analyse(model, y, q, 1000, torch.Generator().manual_seed(1), other=exact)
    assert (result.ess_fraction > 0.999).all()
    assert set(result.verdict) == {"reliable"}


def test_a_noisy_k_hat_over_uniform_weights_is_not_a_warning():
    """k-hat above 1 has been seen with ESS/N 0.999: the tail fit of near-constant weights is noise."""
    summary = WeightSummary(*(torch.tensor([v, v], dtype=torch.float64) for v in (-1.0, 0.001, -1.0, 999.0, 0.999)))
    levels, reasons = verdict(summary, torch.tensor([1.3, 1.3], dtype=torch.float64), torch.tensor([False, True]))
    assert levels == ["reliable", "unreliable"]  # the second only because the cross-check finds missing mass
    assert "not informative" in reasons[0]


def test_heavy_tailed_weights_are_unreliable():
    """A q much narrower than the posterior gives heavy-tailed weights."""
    model = build_model("gaussian")
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = model.exact_posterior(y)
    narrow = BranchedNormal(exact.log_probs, exact.means, exact.stds * 0.3)
    result = analyse(model, y, narrow, 4000, torch.Generator().manual_seed(2))
    assert (result.pareto_k > 0.7).all() and result.verdict == ["unreliable", "unreliable"]


def test_resampling_follows_the_posterior():
    """SIR from the moment-matched q on gmm recovers the bimodal posterior (KS against its CDF)."""
    model = build_model("gmm")
    y = torch.tensor([3.0], dtype=torch.float64)
    q = best_in_family(model, y, "pq")
    result = analyse(model, y, q, 20_000, torch.Generator().manual_seed(4), resample=True)
    exact = model.exact_posterior(y)
    weights, means, stds = (t[0].numpy() for t in (exact.probs, exact.means, exact.stds))
    cdf = lambda x: (weights * stats.norm.cdf(np.asarray(x)[..., None], means, stds)).sum(-1)  # noqa: E731
    assert stats.kstest(result.resampled_x[0].numpy(), cdf).pvalue > 1e-3
    assert stats.kstest(result.x[0].numpy(), cdf).pvalue < 1e-6  # raw q samples do not follow it


def test_discrete_marginals_and_self_normalised_estimates():
    model = build_model("gmm_open")
    y = torch.tensor([-4.0, 0.5, 6.0], dtype=torch.float64)
    exact = model.exact_posterior(y)
    q = BranchedNormal(torch.log_softmax(exact.log_probs * 0.8, -1), exact.means + 0.2, exact.stds * 1.3)
    result = analyse(model, y, q, 50_000, torch.Generator().manual_seed(5))
    marginals = latent_marginals(model, result.branch_probabilities)
    truth = latent_marginals(model, model.branch_probabilities(exact))
    torch.testing.assert_close(marginals["k"][1] + marginals["k"][2], torch.ones(3, dtype=torch.float64))
    for name in marginals:
        for value in marginals[name]:
            torch.testing.assert_close(marginals[name][value], truth[name][value], atol=0.01, rtol=0)
    torch.testing.assert_close(result.mean_x, exact.mean_x(), atol=0.03, rtol=0)
    torch.testing.assert_close(result.std_x, exact.std_x(), atol=0.03, rtol=0)


def test_extreme_observations_stay_finite():
    model = build_model("gmm_open")
    y = torch.tensor([1e6, -1e6], dtype=torch.float64)
    q = BranchedNormal(torch.log_softmax(torch.zeros(2, 3, dtype=torch.float64), -1), torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64))
    result = analyse(model, y, q, 1000, torch.Generator().manual_seed(6), other=q, resample=True)
    assert torch.isfinite(result.log_weights).all() and torch.isfinite(result.log_evidence).all()
    assert result.verdict == ["unreliable", "unreliable"]
