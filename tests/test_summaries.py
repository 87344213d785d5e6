"""Posterior summaries: mixture quantiles against scipy, weighted quantiles against NumPy's and by sampling."""

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from amortized.distributions import BranchedNormal
from amortized.models import build_model
from amortized.summaries import SUMMARY_LEVELS, central_bounds, mixture_quantiles, weighted_quantiles


def branched(probs, means, stds) -> BranchedNormal:
    return BranchedNormal(*(np.asarray(a, dtype=np.float64) for a in (np.log(probs), means, stds)))


def scipy_quantile(probs, means, stds, level):
    """An independent inversion: Brent's method on scipy's normal CDF, in a bracket found by scipy's own ppf."""
    cdf = lambda x: float((np.asarray(probs) * stats.norm.cdf(x, means, stds)).sum()) - level  # noqa: E731
    low = min(stats.norm.ppf(level, means, stds)) - 1
    high = max(stats.norm.ppf(level, means, stds)) + 1
    return optimize.brentq(cdf, low, high, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


def test_mixture_quantiles_match_scipy_for_separated_overlapping_and_far_branches():
    probs = [[0.3, 0.7], [0.4, 0.6], [1e-6, 1 - 1e-6], [0.2, 0.8]]  # no level falls in a gap between branches
    means = [[-5.0, 4.0], [0.0, 1e3], [-2.0, 2.0], [3e8, 3e8 + 1.0]]
    stds = [[1.0, 2.0], [0.1, 3.0], [0.7, 0.7], [0.7, 2.0]]
    levels = [0.001, *SUMMARY_LEVELS, 0.999]
    ours = mixture_quantiles(branched(probs, means, stds), levels)
    for i in range(len(probs)):
        theirs = [scipy_quantile(probs[i], means[i], stds[i], level) for level in levels]
        np.testing.assert_allclose(ours[i], theirs, rtol=1e-13, atol=1e-12)


def test_one_branch_quantiles_are_the_normal_ppf():
    means, stds = np.array([[0.0], [-3.5], [1e6]]), np.array([[1.0], [0.25], [7.0]])
    ours = mixture_quantiles(branched(np.ones_like(means), means, stds), SUMMARY_LEVELS)
    np.testing.assert_allclose(ours, stats.norm.ppf(SUMMARY_LEVELS, means, stds), rtol=1e-14, atol=1e-13)


def test_quantiles_of_a_bad_row_are_nan_and_the_others_unaffected():
    dist = branched([[1.0], [1.0], [1.0]], [[0.0], [np.nan], [2.0]], [[1.0], [1.0], [0.0]])
    out = mixture_quantiles(dist, [0.5, 1.5])
    assert out[0, 0] == pytest.approx(0.0, abs=1e-15) and np.isnan(out[0, 1])
    assert np.isnan(out[1:]).all()


def test_exact_posterior_quantiles_of_the_gmm_hold_their_mass():
    """The exact posterior (one entry per mixture component) has its levels' mass below its quantiles."""
    model = build_model("gmm")
    exact = model.exact_posterior(torch.tensor([-4.0, 0.0, 6.0], dtype=torch.float64)).numpy()
    x = mixture_quantiles(exact, SUMMARY_LEVELS)
    cdf = (exact.probs[:, None, :] * stats.norm.cdf(x[..., None], exact.means[:, None, :], exact.stds[:, None, :])).sum(
        -1
    )
    np.testing.assert_allclose(cdf, np.broadcast_to(SUMMARY_LEVELS, cdf.shape), atol=1e-14)


def test_weighted_quantiles_are_numpys_inverted_cdf_row_by_row():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 257))
    log_weights = rng.normal(scale=2.0, size=x.shape)
    log_weights[5, :100] = -np.inf  # zero weights
    x[7, 10:20] = x[7, 0]  # ties
    ours = weighted_quantiles(x, log_weights, SUMMARY_LEVELS)
    for i in range(len(x)):
        w = np.exp(log_weights[i] - log_weights[i].max())
        theirs = np.quantile(x[i], SUMMARY_LEVELS, weights=w, method="inverted_cdf")
        np.testing.assert_array_equal(ours[i], theirs)


def test_weighted_quantiles_recover_the_target_by_importance_sampling():
    """Draws of N(0, 2^2) weighted by N(0, 1) / N(0, 2^2): their quantiles are N(0, 1)'s, within sampling error."""
    rng = np.random.default_rng(11)
    x = rng.normal(scale=2.0, size=(4, 200_000))
    log_weights = stats.norm.logpdf(x) - stats.norm.logpdf(x, scale=2.0)
    ours = weighted_quantiles(x, log_weights, central_bounds((0.5, 0.9)))
    np.testing.assert_allclose(ours, np.broadcast_to(stats.norm.ppf(central_bounds((0.5, 0.9))), ours.shape), atol=0.02)


def test_rows_with_unusable_weights_give_nan():
    x = np.arange(12.0).reshape(3, 4)
    log_weights = np.array([[0.0, 0, 0, 0], [0, np.nan, 0, 0], [-np.inf] * 4])
    out = weighted_quantiles(x, log_weights, [0.5])
    assert out[0, 0] == 1.0 and np.isnan(out[1:]).all()


def test_a_summary_sends_each_number_once():
    """No interval bound repeats a quantile (the 50% interval would be the quartiles): every level is distinct."""
    levels = {round(level, 12) for level in SUMMARY_LEVELS}  # (1 - 0.9) / 2 is 0.04999999999999999
    assert len(levels) == len(SUMMARY_LEVELS)
    assert {round(level, 12) for level in central_bounds([0.5, 0.9])} <= levels  # those intervals are quantiles
