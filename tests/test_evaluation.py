"""Scores against the truth: KL paths agree, best-in-family optima are optima, docs/science.md's numbers hold."""

import math

import pytest
import torch

from amortized.distributions import BranchedNormal
from amortized.divergences import kl_divergences
from amortized.evaluation import _mode_fit, best_in_family
from amortized.models import MODELS, build_model

Y = torch.tensor([-20.0, -3.0, 0.0, 0.4, 8.0, 31.0], dtype=torch.float64)


@pytest.mark.parametrize("name", MODELS)
def test_the_exact_posterior_is_zero_kl_from_itself(name):
    model = build_model(name)
    exact = model.exact_posterior(Y)
    best = best_in_family(model, Y, "pq")
    kl_pq, kl_qp = kl_divergences(model, exact, best)
    if model.family_contains_posterior:
        assert kl_pq.abs().max() < 1e-12 and kl_qp.abs().max() < 1e-12
    else:
        assert (kl_pq > 0.1).all() and (kl_qp > 0.1).all()  # one normal cannot be a bimodal posterior


def test_quadrature_agrees_with_the_closed_form():
    """gmm_discrete has closed-form KLs; evaluating the same pair by quadrature must agree."""
    model = build_model("gmm_discrete")
    exact = model.exact_posterior(Y)
    q = BranchedNormal(torch.log_softmax(exact.log_probs + 0.3, -1).flip(-1), exact.means + 0.2, exact.stds * 1.3)
    closed = kl_divergences(model, exact, q)

    class Quadrature:  # the same model, but not claiming its family holds the posterior
        family_contains_posterior = False
        table = model.table

    numeric = kl_divergences(Quadrature, exact, q)
    for a, b in zip(closed, numeric):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # scores are quoted to 1e-4 nats


def test_gmm_best_answers_are_the_seeds_contrast():
    """At y = 0: moment matching is about 5.05 wide, the mode fit about 0.995 on one mode."""
    model = build_model("gmm")
    y0 = torch.zeros(1, dtype=torch.float64)
    assert best_in_family(model, y0, "pq").stds.item() == pytest.approx(5.05, abs=0.01)
    fit = best_in_family(model, y0, "qp")
    assert fit.stds.item() == pytest.approx(0.995, abs=0.002) and abs(fit.means.item()) == pytest.approx(4.95, abs=0.01)
    heavier = best_in_family(model, torch.tensor([-3.0, 3.0], dtype=torch.float64), "qp").means.flatten()
    assert heavier[0] < -4 and heavier[1] > 4  # the fit sits on the heavier mode, which switches at y = 0


def test_the_mode_fit_is_a_minimum():
    """No small perturbation of the fitted (mean, std) lowers KL(q || p)."""
    model = build_model("gmm")
    exact = model.exact_posterior(Y)
    fit = _mode_fit(model, exact)
    base = kl_divergences(model, exact, fit)[1]
    for d_mean, d_log_std in [(0.02, 0), (-0.02, 0), (0, 0.02), (0, -0.02)]:
        moved = BranchedNormal(fit.log_probs, fit.means + d_mean, fit.stds * math.exp(d_log_std))
        assert (kl_divergences(model, exact, moved)[1] >= base - 1e-9).all()


def test_moment_matching_is_the_forward_kl_minimum():
    model = build_model("gmm")
    exact = model.exact_posterior(Y)
    match = best_in_family(model, Y, "pq")
    base = kl_divergences(model, exact, match)[0]
    for d_mean, scale in [(0.05, 1), (-0.05, 1), (0, 1.02), (0, 0.98)]:
        moved = BranchedNormal(match.log_probs, match.means + d_mean, match.stds * scale)
        assert (kl_divergences(model, exact, moved)[0] > base).all()


def test_a_recompiled_network_is_clearly_worse_only_past_the_tolerance():
    """The replace rule of jobs: the objective's own KL may exceed the served one's by max(0.01 nats, 10%)."""
    from amortized.evaluation import REPLACE_TOLERANCE_NATS, REPLACE_TOLERANCE_RATIO, clearly_worse

    test_set = {"size": 1000, "seed": 1}
    scored = lambda kl_pq, kl_qp: {"test_set": test_set, "kl_pq": kl_pq, "kl_qp": kl_qp}  # noqa: E731
    for served in (0.0, 0.002, 0.05, 3.0):
        allowed = served + max(REPLACE_TOLERANCE_NATS, REPLACE_TOLERANCE_RATIO * served)
        for objective in ("pq", "qp"):
            other = "qp" if objective == "pq" else "pq"
            at_bound = {f"kl_{objective}": allowed, f"kl_{other}": 1e9}  # the other objective's KL does not count
            assert clearly_worse(scored(**at_bound), scored(served, served), objective) is None
            past = {f"kl_{objective}": math.nextafter(allowed, math.inf) * (1 + 1e-9), f"kl_{other}": 0.0}
            why = clearly_worse(scored(**past), scored(served, served), objective)
            assert why is not None and why.startswith(f"kl_{objective} ") and f"{allowed:.4g}" in why
    assert clearly_worse(scored(math.nan, math.nan), scored(0.1, 0.1), "pq") is not None  # a NaN score: worse
    assert clearly_worse(scored(5.0, 5.0), scored(math.nan, math.nan), "qp") is None  # a NaN served: replaced
    with pytest.raises(ValueError, match="different test sets"):
        clearly_worse({**scored(0, 0), "test_set": {"size": 10, "seed": 1}}, scored(0, 0), "pq")


def test_a_compiled_networks_quality_is_good_up_to_the_gap_bound_and_poor_past_it():
    from amortized.evaluation import GOOD_GAP_NATS, compile_quality

    for objective in ("pq", "qp"):
        at = compile_quality({f"gap_{objective}": GOOD_GAP_NATS}, objective)
        assert at["verdict"] == "good" and at["amortisation_gap"] == GOOD_GAP_NATS
        past = compile_quality({f"gap_{objective}": math.nextafter(GOOD_GAP_NATS, 1.0)}, objective)
        assert past["verdict"] == "poor" and "check the training settings" in past["why"]
        assert compile_quality({f"gap_{objective}": math.nan}, objective)["verdict"] == "poor"
        assert compile_quality({f"gap_{objective}": None}, objective)["verdict"] == "unknown"
    # the committed networks: each objective's own gap is good, as the README's table says
    from amortized.artifacts import discover_artifacts
    from tests.conftest import ARTIFACTS

    loaded, refused = discover_artifacts(ARTIFACTS)
    assert loaded and not refused
    for (variant, objective), artifact in loaded.items():
        verdict = compile_quality(artifact.manifest.metrics, objective)["verdict"]
        assert verdict in ("good", "unknown"), (variant, objective, artifact.manifest.metrics.get(f"gap_{objective}"))
