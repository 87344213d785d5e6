"""Importance diagnostics: k-hat against arviz-stats and the closed form, evidence within its error, honest verdicts."""

import math

import numpy as np
import pytest
import torch
from arviz_stats.base.array import BaseArray
from scipy import stats

from amortized.arrays import logsumexp
from amortized.diagnostics import (
    AGREEMENT_FLOOR,
    AGREEMENT_Z,
    MISSED_MASS_FLOOR,
    MISSED_MASS_Z,
    REQUEST_KL_GRID,
    CrossCheckResult,
    analyse,
    evidence_agreement,
    verdict,
)
from amortized.distributions import BranchedNormal
from amortized.divergences import (
    COMPONENT_GRID,
    dense_expected_log_density,
    expectation_weights,
    expected_log_density,
    kl_divergences,
)
from amortized.evaluation import best_in_family
from amortized.importance import kernels
from amortized.importance.noise import joint_log_prob, log_prob_at_draws, proposal_log_prob, weight_tables
from amortized.importance.psis import pareto_k_hat
from amortized.importance.weighing import MISSED_DENSITY_RATIO, WeightSummary, mixture_check, summarise_weights, weigh
from amortized.mixture import view_for
from amortized.models import MODELS, build_model


@pytest.mark.parametrize("num_samples", [60, 1000, 5000])
def test_pareto_k_matches_arviz_stats(num_samples):
    """arviz-stats smooths -ary, so log weights go in negated (as documented by its psislw)."""
    rng = np.random.default_rng(num_samples)
    log_weights = rng.standard_t(3, size=(6, num_samples)) * rng.uniform(0.3, 2.0, size=(6, 1))
    ours = pareto_k_hat(log_weights)
    reference = np.array([BaseArray().psislw(-row)[1] for row in log_weights])
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)


def test_pareto_k_rows_that_cannot_be_fitted_are_nan_and_leave_the_others_alone():
    """Equal tail weights (no exceedances) or a NaN weight give NaN; zero weights (-inf) below the tail don't matter."""
    rng = np.random.default_rng(5)
    log_weights = rng.standard_t(3, size=(5, 1000))
    alone = pareto_k_hat(log_weights[[0]])
    log_weights[1] = 0.0  # every weight equal
    log_weights[2, 7] = np.nan
    log_weights[3, :500] = -np.inf  # half the draws impossible: the tail is the other half's
    with np.errstate(invalid="ignore"):
        k = pareto_k_hat(log_weights)
    assert np.isnan(k[1]) and np.isnan(k[2])
    assert np.isfinite(k[[0, 3, 4]]).all()
    np.testing.assert_array_equal(k[0], alone[0])  # rows are independent of each other, to the bit


@pytest.mark.parametrize("scale", [1.2, 1.5, 2.0, 3.0])
def test_pareto_k_matches_the_closed_form(scale):
    """Proposal N(0, 1), target N(0, s^2): k = 1 - 1/s^2; finite-sample estimates sit slightly low for large s."""
    x = np.random.default_rng(7).standard_normal((8, 100_000))
    log_weights = -0.5 * x**2 / scale**2 - math.log(scale) + 0.5 * x**2
    assert pareto_k_hat(log_weights).mean() == pytest.approx(1 - 1 / scale**2, abs=0.1)


def test_weight_summary_formulas():
    log_weights = np.log(np.array([[1.0, 1.0, 2.0, 4.0]]))
    summary = summarise_weights(log_weights)
    assert summary.log_evidence.item() == pytest.approx(math.log(2.0))
    assert summary.ess.item() == pytest.approx(64 / 22)
    assert summary.elbo.item() == pytest.approx(math.log(8) / 4)


@pytest.mark.parametrize("name", MODELS)
def test_evidence_is_within_three_standard_errors(name):
    """With the best mass-covering member of q's family as proposal, every y."""
    model = build_model(name)
    y = np.array([-9.0, -1.0, 0.0, 2.5, 12.0])
    q = best_in_family(model, torch.tensor(y), "pq").numpy()
    if model.family_contains_posterior:  # perturb the exact posterior so the weights are not all equal
        q = BranchedNormal(q.log_probs, q.means + 0.3 * q.stds, q.stds * 1.2)
    result = analyse(model, y, q, 20_000, np.random.default_rng(3))
    z = (result.log_evidence - model.log_evidence(y)) / result.log_evidence_se
    assert (np.abs(z) < 3).all(), z


def test_cross_check_catches_a_missed_mode_that_ess_cannot_see():
    """gmm at y = 0: the mode fit looks perfect to ESS and k-hat, yet misses half the mass."""
    model = build_model("gmm")
    y = np.zeros(1)
    mode_fit, covering = (best_in_family(model, torch.tensor(y), d).numpy() for d in ("qp", "pq"))
    result = analyse(model, y, mode_fit, 1000, np.random.default_rng(0), other=covering)
    assert result.ess_fraction.item() > 0.99
    assert result.log_evidence.item() == pytest.approx(model.log_evidence(y).item() - math.log(2), abs=0.01)
    assert not result.cross_check.consistent.item() and result.cross_check.misses_mass.item()
    assert result.verdict == ["unreliable"] and "misses posterior mass" in result.reason[0]
    truth = model.log_evidence(y).item()
    assert (
        abs(result.cross_check.log_evidence_mixture.item() - truth)
        < 3 * result.cross_check.log_evidence_mixture_se.item()
    )
    again = analyse(model, y, covering, 1000, np.random.default_rng(0), other=covering)
    assert again.cross_check.consistent.item() and again.verdict == ["reliable"]
    # the covering q is not blamed for the other's missing mode: the flag is raised, the verdict stays
    covering_first = analyse(model, y, covering, 1000, np.random.default_rng(0), other=mode_fit)
    assert not covering_first.cross_check.consistent.item() and not covering_first.cross_check.misses_mass.item()
    assert covering_first.verdict == ["reliable"]


def test_nearly_exact_q_does_not_cry_wolf():
    """Weights within a hair of uniform make k-hat noise; the verdict must stay 'reliable'."""
    model = build_model("gmm_discrete")
    y = np.linspace(-15, 15, 40)
    exact = model.exact_posterior(y)
    q = BranchedNormal(exact.log_probs, exact.means + 1e-3, exact.stds * 1.001)
    result = analyse(model, y, q, 1000, np.random.default_rng(1), other=exact)
    assert (result.ess_fraction > 0.999).all()
    assert set(result.verdict) == {"reliable"}


def a_check(missed_mass, missed_mass_se, misses_mass) -> CrossCheckResult:
    """A cross-check result with given missed-mass figures (evidence fields irrelevant to the verdict)."""
    values = [np.asarray(v, dtype=float) for v in (missed_mass, missed_mass_se)]
    nan = np.full_like(values[0], math.nan)
    pooled_ess = np.full_like(values[0], 2000.0)
    return CrossCheckResult(
        nan, nan, nan, nan, *values, pooled_ess, np.ones_like(nan, dtype=bool), np.asarray(misses_mass), 1000
    )


def test_a_noisy_k_hat_over_uniform_weights_is_not_a_warning():
    """k-hat above 1 has been seen with ESS/N 0.999: the tail fit of near-constant weights is noise."""
    summary = WeightSummary(*(np.array([v, v]) for v in (-1.0, 0.001, -1.0, 999.0, 0.999)), np.full((2, 1000), 1e-3))
    levels, reasons, own = verdict(summary, np.array([1.3, 1.3]), 1000, a_check([0.0, 0.3], [0.0, 0.01], [False, True]))
    assert levels == ["reliable", "unreliable"]  # the second only because the cross-check finds missing mass
    assert not own.any()  # the weights themselves are fine in both
    assert "not informative" in reasons[0] and "finds no missed mass" in reasons[0]
    assert "q misses posterior mass: 30.0%" in reasons[1]


def test_heavy_tailed_weights_are_unreliable():
    """A q much narrower than the posterior gives heavy-tailed weights (enough draws that k-hat's noise is small)."""
    model = build_model("gaussian")
    y = np.array([0.0, 1.0])
    exact = model.exact_posterior(y)
    narrow = BranchedNormal(exact.log_probs, exact.means, exact.stds * 0.3)
    result = analyse(model, y, narrow, 20_000, np.random.default_rng(2))  # true k = 1 - 0.3^2 = 0.91
    assert (result.pareto_k > 0.7).all() and result.verdict == ["unreliable", "unreliable"]
    # no standard error is claimed for them: the delta-method value is below 1 nat whatever the weights
    assert np.isnan(result.log_evidence_se).all()


def test_resampling_follows_the_posterior():
    """SIR from the moment-matched q on gmm recovers the bimodal posterior (KS against its CDF)."""
    model = build_model("gmm")
    y = np.array([3.0])
    q = best_in_family(model, torch.tensor(y), "pq").numpy()
    result = analyse(model, y, q, 20_000, np.random.default_rng(4), resample=True)
    exact = model.exact_posterior(y)
    weights, means, stds = (t[0] for t in (exact.probs, exact.means, exact.stds))
    cdf = lambda x: (weights * stats.norm.cdf(np.asarray(x)[..., None], means, stds)).sum(-1)  # noqa: E731
    # SIR draws N from a pool of N weighted draws (ESS/N ~ 0.35): many repeats, so a KS test of all N
    # would test the pool's discreteness; 2000 of them are nearly independent draws of the posterior
    assert stats.kstest(result.resampled_x[0, :2000], cdf).pvalue > 1e-3
    assert stats.kstest(result.x[0], cdf).pvalue < 1e-6  # raw q samples do not follow it


def latent_marginals(model, branch_probabilities):
    """{latent: {value: P(latent = value)}} from the model's columns."""
    columns = model.latent_marginals(branch_probabilities)
    return {
        name: {v: columns[:, part][:, i] for i, v in enumerate(values)}
        for name, values, part in model.latent_values.groups
    }


def test_discrete_marginals_and_self_normalised_estimates():
    model = build_model("gmm_open")
    y = np.array([-4.0, 0.5, 6.0])
    exact = model.exact_posterior(y)
    log_probs = exact.log_probs * 0.8
    q = BranchedNormal(log_probs - logsumexp(log_probs)[:, None], exact.means + 0.2, exact.stds * 1.3)
    result = analyse(model, y, q, 50_000, np.random.default_rng(5))
    marginals = latent_marginals(model, result.branch_probabilities)
    truth = latent_marginals(model, model.branch_probabilities(exact))
    assert set(marginals) == {"k", "z"} and set(marginals["k"]) == {1, 2} and set(marginals["z"]) == {0, 1}
    np.testing.assert_allclose(marginals["k"][1] + marginals["k"][2], np.ones(3))
    for name in marginals:
        for value in marginals[name]:
            np.testing.assert_allclose(marginals[name][value], truth[name][value], atol=0.01, rtol=0)
    np.testing.assert_allclose(result.mean_x, exact.mean_x(), atol=0.03, rtol=0)
    np.testing.assert_allclose(result.std_x, exact.std_x(), atol=0.03, rtol=0)


def test_extreme_observations_stay_finite():
    model = build_model("gmm_open")
    y = np.array([1e6, -1e6])
    q = BranchedNormal(np.full((2, 3), -math.log(3)), np.zeros((2, 3)), np.ones((2, 3)))
    result = analyse(model, y, q, 1000, np.random.default_rng(6), other=q, resample=True)
    assert np.isfinite(result.log_weights).all() and np.isfinite(result.log_evidence).all()
    assert result.verdict == ["unreliable", "unreliable"]


@pytest.mark.parametrize("name", MODELS)
def test_compiled_weighing_matches_the_log_joint_minus_log_q(name):
    """The request path's compiled loops (noise quadratics, fused sums) against plain NumPy on the same draws."""
    model = build_model(name)
    y = np.array([-30.0, -4.0, 0.0, 0.7, 9.0, 1e3])
    rng = np.random.default_rng(8)
    shape = (len(y), model.num_branches)
    log_probs = rng.normal(size=shape)
    q = BranchedNormal(
        log_probs - logsumexp(log_probs)[:, None],
        y[:, None] * 0.5 + rng.normal(size=shape),
        rng.uniform(0.3, 3.0, shape),
    )
    other = BranchedNormal(q.log_probs[:, ::-1].copy(), q.means + 1.0, q.stds * 0.7)
    weighed = weigh(model, y, q, 500, np.random.default_rng(9), other=other)
    branch, x = q.sample(500, np.random.default_rng(9))  # the same draws as sample() gives
    np.testing.assert_array_equal(weighed.branch, branch)
    np.testing.assert_array_equal(weighed.x, x)
    log_q = q.log_prob(branch, x)
    log_weights = model.log_joint(branch, x, y[:, None]) - log_q
    np.testing.assert_allclose(weighed.log_weights, log_weights, rtol=1e-9, atol=1e-8)
    reference = summarise_plainly(log_weights)
    for field in ("log_evidence", "log_evidence_se", "elbo", "ess"):
        np.testing.assert_allclose(getattr(weighed.summary, field), reference[field], rtol=1e-9, err_msg=field)
    normalised = reference["normalised"]
    np.testing.assert_allclose(weighed.summary.normalised, normalised, rtol=1e-9, atol=1e-300)
    mean_x, std_x, branch_probabilities = kernels.weighted_moments(
        weighed.summary.normalised, x, branch, model.num_branches
    )
    mean = (normalised * x).sum(-1)
    np.testing.assert_allclose(mean_x, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std_x, np.sqrt((normalised * (x - mean[:, None]) ** 2).sum(-1)), rtol=1e-8)
    probabilities = np.stack([(normalised * (branch == b)).sum(-1) for b in range(model.num_branches)], -1)
    np.testing.assert_allclose(branch_probabilities, probabilities, rtol=1e-9, atol=1e-12)
    # the mixture (q + other) / 2 as proposal, pooling q's draws and other's
    check = weigh(
        model,
        np.repeat(y, 2),
        BranchedNormal.interleave([q, other]),
        500,
        np.random.default_rng(9),
        BranchedNormal.interleave([other, q]),
    )
    log_z, log_z_se, pooled_ess, missed, missed_se = mixture_check(check.log_weights, check.log_ratio)
    q_branch, q_x = check.branch[0::2], check.x[0::2]
    o_branch, o_x = check.branch[1::2], check.x[1::2]
    pooled_branch, pooled_x = np.concatenate([q_branch, o_branch], 1), np.concatenate([q_x, o_x], 1)
    log_p = model.log_joint(pooled_branch, pooled_x, y[:, None])
    log_q_pooled, log_o_pooled = q.log_prob(pooled_branch, pooled_x), other.log_prob(pooled_branch, pooled_x)
    mixture_log_weights = log_p - np.logaddexp(log_q_pooled, log_o_pooled) + math.log(2)
    plain = summarise_plainly(mixture_log_weights)
    np.testing.assert_allclose(log_z, plain["log_evidence"], rtol=1e-9)
    np.testing.assert_allclose(log_z_se, plain["log_evidence_se"], rtol=1e-8)
    np.testing.assert_allclose(pooled_ess, plain["ess"], rtol=1e-9)
    # missed mass: the posterior probability where q's density is below 1% of the posterior's
    in_region = log_p - log_q_pooled > plain["log_evidence"][:, None] - math.log(MISSED_DENSITY_RATIO)
    w = plain["normalised"]
    mass = (w * in_region).sum(-1)
    np.testing.assert_allclose(missed, mass, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        missed_se, np.sqrt((w**2 * (in_region - mass[:, None]) ** 2).sum(-1)), rtol=1e-8, atol=1e-15
    )
    if name != "gaussian":  # there q and other are single normals that leave no region out
        # draws on both sides of the threshold: the comparison is exercised
        assert in_region.any() and not in_region.all()


def summarise_plainly(log_weights: np.ndarray) -> dict[str, np.ndarray]:
    """The weight summary of docs/science.md, written out in NumPy."""
    n = log_weights.shape[-1]
    weights = np.exp(log_weights - log_weights.max(-1, keepdims=True))
    ess = weights.sum(-1) ** 2 / (weights**2).sum(-1)
    return {
        "log_evidence": logsumexp(log_weights) - math.log(n),
        "log_evidence_se": np.sqrt(1 / ess - 1 / n),
        "elbo": log_weights.mean(-1),
        "ess": ess,
        "normalised": weights / weights.sum(-1, keepdims=True),
    }


def test_the_request_kl_grid_is_within_2e4_of_the_scoring_grid():
    """gmm's KLs need quadrature; per query it runs on fewer points (REQUEST_KL_GRID)."""
    model = build_model("gmm")
    y = np.linspace(-40.0, 40.0, 81)
    exact = model.exact_posterior(y)
    for objective in ("pq", "qp"):
        best = best_in_family(model, torch.tensor(y), objective).numpy()
        for q in (best, BranchedNormal(best.log_probs, best.means + 0.5, best.stds * 1.5)):
            scoring = kl_divergences(model, exact, q)
            per_query = kl_divergences(model, exact, q, REQUEST_KL_GRID)
            for fine, coarse in zip(scoring, per_query):
                np.testing.assert_allclose(coarse, fine, rtol=2e-4, atol=1e-6)


def test_compiled_passes_give_numpys_bits():
    """The kernels that replace NumPy passes on the request path give the same bits, NaN and infinities included."""
    rng = np.random.default_rng(12)
    terms = rng.normal(size=(3, 6, 50)) * 30
    terms[:, 0, :5] = -np.inf  # every component impossible
    terms[1, 1, :5] = np.inf
    terms[2, 2, :5] = np.nan
    scratch = terms.copy()
    top = np.empty(scratch.shape[1:])
    for r in range(len(top)):
        kernels.shift_row(scratch, top, r)
    total = kernels.component_sums(np.exp(scratch, out=scratch))
    with np.errstate(divide="ignore", invalid="ignore"):
        ours = np.log(total) + top
        theirs = logsumexp(terms.copy(), 0)
    np.testing.assert_array_equal(ours, theirs)
    log_weights, log_ratio = rng.normal(size=(6, 50)) * 5, rng.normal(size=(6, 50)) * 5
    log_weights[0, :3], log_ratio[1, :3], log_weights[2] = -np.inf, np.nan, -np.inf
    exponents, shift = kernels.mixture_exponents(log_weights, log_ratio)
    with np.errstate(invalid="ignore"):
        bound = log_weights - np.maximum(log_ratio, 0.0)
        expected_shift = bound.reshape(3, 100).max(-1)
        expected_shift = np.where(np.isfinite(expected_shift), expected_shift, 0.0)
        np.testing.assert_array_equal(shift, expected_shift)
        np.testing.assert_array_equal(exponents[0], bound - np.repeat(expected_shift, 2)[:, None])
    np.testing.assert_array_equal(exponents[1], -np.abs(log_ratio))
    b, x = rng.normal(size=(4, 7)), rng.normal(size=(4, 9))
    np.testing.assert_array_equal(kernels.one_minus_outer(b, x), 1.0 - np.einsum("ri,rj->rij", b, x))


@pytest.mark.parametrize("components", [1, 2])
@pytest.mark.parametrize("name", MODELS)
def test_the_compiled_quadratic_tables_are_numpys(name, components):
    """weight_tables against the NumPy quadratics it stands in for: every model, a mixture network's view, with and
    without another proposal, extreme y and stds included."""
    model = view_for(build_model(name), components)
    y = np.array([-1e6, -30.0, 0.0, 0.7, 9.0, 3e8])
    rng = np.random.default_rng(21)
    shape = (len(y), model.num_branches)
    log_probs = rng.normal(size=shape)
    q = BranchedNormal(
        log_probs - logsumexp(log_probs)[:, None], y[:, None] + rng.normal(size=shape), rng.uniform(1e-3, 30.0, shape)
    )
    other = BranchedNormal(q.log_probs[:, ::-1].copy(), q.means - 2.0, q.stds * 3.0)
    own = proposal_log_prob(q)
    with np.errstate(divide="ignore"):  # -inf where a component is not in a branch
        expected_joint = (joint_log_prob(model, q, y) - own).table()
    expected_ratio = (log_prob_at_draws(other, q) - own).table()
    joint, ratio = weight_tables(model, q, y, other)
    np.testing.assert_allclose(joint, expected_joint, rtol=1e-14, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(joint), np.isneginf(expected_joint))
    np.testing.assert_allclose(ratio, expected_ratio, rtol=1e-14, atol=1e-12)
    alone, none = weight_tables(model, q, y, None)
    np.testing.assert_array_equal(alone, joint)
    assert none.shape == (0, *joint.shape[1:])


def test_the_weight_summary_kernels_keep_numpys_rules_for_non_finite_rows():
    """A row with a NaN shifts by 0 and stays NaN; a row of -inf shifts by 0 (all weights 0, evidence -inf); a row
    with +inf shifts by 0; finite rows shift by their largest value. One draw has no standard error (NaN)."""
    log_weights = np.random.default_rng(22).normal(size=(5, 40)) * 20
    log_weights[0, 7] = np.nan
    log_weights[1] = -np.inf
    log_weights[2, 3] = np.inf
    shifted, shift = kernels.shifted_rows(log_weights)
    with np.errstate(invalid="ignore"):
        top = log_weights.max(-1)
        expected = np.where(np.isfinite(top), top, 0.0)
        np.testing.assert_array_equal(shift, expected)
        np.testing.assert_array_equal(shifted, log_weights - expected[:, None])
    with np.errstate(all="ignore"):
        summary = summarise_weights(log_weights)
        reference = summarise_plainly(log_weights[3:])
    for field in ("log_evidence", "log_evidence_se", "elbo", "ess"):
        np.testing.assert_allclose(getattr(summary, field)[3:], reference[field], rtol=1e-12, err_msg=field)
    assert np.isnan(summary.log_evidence[0]) and summary.log_evidence[1] == -np.inf
    assert np.isnan(summarise_weights(np.zeros((2, 1))).log_evidence_se).all()


@pytest.mark.parametrize("branches", [1, 3, 12])  # 12: past FEW_BRANCHES, each draw looks its branch up
def test_the_draws_kernel_places_draws_and_shifts_each_components_terms_as_numpy_does(branches):
    """evaluate_draws against the same steps written out in NumPy: branch, x, the quadratics, the shift per draw."""
    rng = np.random.default_rng(21)
    rows, n, components = 5, 40, 3
    probs = rng.dirichlet(np.ones(branches), rows)
    edges = np.ascontiguousarray(np.cumsum(probs, -1)[:, :-1])
    uniform, noise = rng.random((rows, n)), rng.normal(size=(rows, n))
    means, stds = rng.normal(size=(rows, branches)) * 3, rng.random((rows, branches)) + 0.5
    joint, ratio = rng.normal(size=(components, rows, branches, 3)) * 4, rng.normal(size=(1, rows, branches, 3))
    joint[0, 0, :, 0] = -np.inf  # a component impossible in every branch of a row
    joint[1, 1, :, 0], joint[2, 2, :, 0] = np.inf, np.nan
    branch, x, terms, log_ratio, top = kernels.evaluate_draws(
        edges, uniform if branches > 1 else np.empty((rows, 0)), noise, means, stds, joint, ratio
    )
    expected_branch = (uniform[..., None] >= edges[:, None, :]).sum(-1) if branches > 1 else np.zeros((rows, n), int)
    np.testing.assert_array_equal(branch, expected_branch)
    at = np.arange(rows)[:, None], expected_branch
    np.testing.assert_array_equal(x, means[at] + stds[at] * noise)
    quadratic = joint[:, at[0], at[1]]  # (components, rows, n, 3)
    with np.errstate(invalid="ignore"):
        unshifted = quadratic[..., 0] + noise * (quadratic[..., 1] + quadratic[..., 2] * noise)
        shift = unshifted.max(0)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        np.testing.assert_array_equal(top, shift)
        np.testing.assert_array_equal(terms, unshifted - shift)
    one = ratio[0][at]
    np.testing.assert_array_equal(log_ratio[0], one[..., 0] + noise * (one[..., 1] + one[..., 2] * noise))


def test_the_cross_checks_agreement_matches_its_definition():
    """evidence_agreement against the comparisons written out in NumPy, NaN counting as disagreement and missed mass."""
    rng = np.random.default_rng(13)
    estimates = rng.normal(size=(3, 400)) * 0.01
    errors = np.abs(rng.normal(size=(3, 400))) * 0.003
    missed, missed_se = np.abs(rng.normal(size=400)) * 0.02, np.abs(rng.normal(size=400)) * 0.005
    estimates[0, :5], errors[1, 5:10], missed[10:15], missed_se[15:20] = np.nan, np.nan, np.nan, np.nan
    consistent, misses = evidence_agreement(estimates, errors, missed, missed_se)
    gaps = np.abs(estimates[:, None] - estimates[None, :])
    allowed = AGREEMENT_Z * np.sqrt(errors[:, None] ** 2 + errors[None, :] ** 2) + AGREEMENT_FLOOR
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(consistent, (gaps <= allowed).all((0, 1)))
        excess = missed - MISSED_MASS_Z * missed_se
        below = ~(estimates[0] >= estimates[2] - allowed[0, 2])
        np.testing.assert_array_equal(misses, below | (excess > MISSED_MASS_FLOOR) | np.isnan(excess))
    assert consistent.any() and (~consistent[20:]).any() and misses[20:].any() and (~misses).any()


@pytest.mark.parametrize(
    "params",
    [
        {"means": [-1e6, 1e6], "stds": [1e-6, 1e6], "sigma": 1e-6},  # a newcomer's: kl_pq was null (NaN) at y = 0
        {"means": [-1e6, 1e6], "stds": [1e-6, 1e-6], "sigma": 1e6},
        {"means": [-3e5, 2e5], "stds": [1e-5, 1e3], "sigma": 1e-3},
        {},  # the default, beside them
    ],
)
def test_the_compiled_kl_quadrature_is_numpys_at_terms_beyond_1e17(params):
    """log p(b, x) under a component of tiny weight is a sum of terms near -1e23: the compiled skip of negligible
    terms (37 nats below the largest) must still keep the largest one. Held to the dense NumPy sums, finite."""
    model = build_model("gmm", params)
    y = np.array([-2e6, -1e6, -5e5, -1.0, 0.0, 3.0, 5e5, 1e6, 2e6])
    exact = model.exact_posterior(y)
    table = model.table(exact.means)
    p = [np.ascontiguousarray(a) for a in (exact.log_probs, exact.means, exact.stds)]
    q = best_in_family(model, torch.tensor(y), "qp").numpy()
    for centres, widths, branch, grid in (
        (p[1], p[2], table.component_branch, COMPONENT_GRID),
        (np.ascontiguousarray(q.means), np.ascontiguousarray(q.stds * 3), np.arange(1), REQUEST_KL_GRID),
    ):
        arguments = (centres, widths, branch, *p, table.membership > 0, grid, expectation_weights(grid))
        compiled, dense = expected_log_density(*arguments), dense_expected_log_density(*arguments)
        assert np.isfinite(compiled).all(), compiled
        np.testing.assert_allclose(compiled, dense, rtol=1e-12, atol=1e-9)
    assert all(np.isfinite(kl).all() for kl in kl_divergences(model, exact, q, REQUEST_KL_GRID))


def test_four_lane_sums_add_every_term_once_in_their_stated_order():
    """The compiled reductions' sum (kernels.four_lane_sum): every length's tail included, the stated order to the bit,
    close to an exact sum, and NaN and infinities carried as a plain sum carries them."""
    rng = np.random.default_rng(12)
    for n in (0, 1, 3, 4, 5, 8, 11, 1000, 1003):
        terms = rng.normal(size=n) * 10.0 ** rng.integers(-5, 5, size=n)
        lanes = [0.0] * 4
        whole = n - n % 4
        for j in range(0, whole, 4):
            for k in range(4):
                lanes[k] += terms[j + k]
        expected = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
        for value in terms[whole:]:
            expected += value
        assert kernels.four_lane_sum(terms) == expected
        assert kernels.four_lane_sum(terms) == pytest.approx(math.fsum(terms), rel=1e-12, abs=1e-9)
    assert math.isnan(kernels.four_lane_sum(np.array([1.0, np.nan, 2.0, 3.0, 4.0])))
    assert kernels.four_lane_sum(np.array([1.0, np.inf, 2.0, 3.0, 4.0, 5.0])) == np.inf
    assert math.isnan(kernels.four_lane_sum(np.array([np.inf, -np.inf, 1.0, 1.0, 1.0])))


@pytest.mark.parametrize("branches", [1, 2, 9])
def test_the_weighted_moments_are_numpys_sums_for_any_number_of_branches(branches):
    """Mean, std and branch probabilities of self-normalised weights against NumPy, draws crowded in one branch
    (a running sum into memory was the slow case) and spread over many; a NaN weight stays in its branch."""
    rng = np.random.default_rng(branches)
    weights = rng.random((5, 1001))
    weights /= weights.sum(-1, keepdims=True)
    x = rng.normal(3.0, 2.0, size=weights.shape)
    branch = rng.integers(0, branches, size=weights.shape)
    branch[0] = 0
    mean, std, probabilities = kernels.weighted_moments(weights, x, branch, branches)
    expected_mean = (weights * x).sum(-1)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-13)
    np.testing.assert_allclose(std, np.sqrt((weights * (x - expected_mean[:, None]) ** 2).sum(-1)), rtol=1e-12)
    expected = np.stack([(weights * (branch == b)).sum(-1) for b in range(branches)], -1)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-13, atol=1e-16)
    weights[1, 7] = np.nan
    _, _, with_nan = kernels.weighted_moments(weights, x, branch, branches)
    assert np.isnan(with_nan[1, branch[1, 7]]) and np.isfinite(np.delete(with_nan[1], branch[1, 7])).all()


def test_a_posterior_wholly_in_the_missed_region_is_a_missed_mass_of_one_exactly():
    """Every pooled draw where q's density is far below the posterior's (q misses it all, as gaussian's qp network
    does at |y| of 1e4): the missed mass is the whole of the weights, 1 with no error, never a few ulp above 1
    (the missed part and the total must be the same sums in the same order). Helper-42's case."""
    rng = np.random.default_rng(3)
    for n in (5, 8, 37, 100, 1000):
        log_weights, log_ratio = np.zeros((2, n)), np.zeros((2, n))
        log_weights[0], log_ratio[0] = 20 + rng.normal(size=n) * 0.3, 30 + rng.normal(size=n)  # q's draws
        log_weights[1], log_ratio[1] = rng.normal(size=n) * 0.3, -30 + rng.normal(size=n)  # the other's draws
        *_, missed, missed_se = mixture_check(log_weights, log_ratio)
        assert missed[0] == 1.0 and missed_se[0] == 0.0, (n, missed[0], missed_se[0])
