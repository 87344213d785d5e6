"""Focused observations for the qp loss (amortized.focus), and the committed artifacts' quality target.

The location of q's step is checked against steps placed analytically; the
focused batch against p(y)'s own draws from the same generator and a uniform
law on the window; the committed networks' gaps are recomputed from their
weights against the exact posterior, not read from their manifests.
"""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import stats

from amortized.artifacts import load_artifact
from amortized.evaluation import evaluate
from amortized.focus import Focus, draw_observations, fastest_change, locate, observation_grid
from amortized.models import build_model
from amortized.training import Phase, default_schedule, recipe
from tests.conftest import ARTIFACTS

TARGET_GAP = 0.005  # nats: the project's target for every default network (README, "Results")


@pytest.mark.parametrize("centre", [-7.3, -0.2, 0.0, 0.47, 12.5])
@pytest.mark.parametrize("slope", [2.0, 40.0, 1000.0])
def test_the_fastest_change_is_where_an_analytic_step_is(centre, slope):
    grid = torch.linspace(-20, 20, 16001, dtype=torch.float64)
    # a smooth trend plus a step of height 10 at ``centre``: the step dominates the trend's slope of 0.3
    mean = 0.3 * grid + 5 * torch.tanh(slope * (grid - centre))
    assert abs(fastest_change(mean, grid) - centre) <= float(grid[1] - grid[0])


def test_the_fastest_change_needs_two_points():
    with pytest.raises(ValueError, match="two points"):
        fastest_change(torch.zeros(1), torch.zeros(1))


def test_the_grid_spans_the_central_99_percent_of_p_y():
    model = build_model("gmm")
    grid = observation_grid(model, seed=0)
    y = model.sample_joint(200_000, torch.Generator().manual_seed(1)).y.double().numpy()
    inside = np.mean((y >= float(grid[0])) & (y <= float(grid[-1])))
    assert 0.985 < inside < 0.995 and torch.all(grid[1:] > grid[:-1])


@pytest.mark.parametrize(
    ("batch", "fraction", "centre", "half_width"), [(256, 0.25, 0.3, 0.25), (1000, 0.5, -4.0, 2.0)]
)
def test_a_focused_batch_is_p_y_then_a_uniform_window(batch, fraction, centre, half_width):
    model = build_model("gmm")
    focus = Focus(centre, half_width, fraction)
    y = draw_observations(model, batch, torch.Generator().manual_seed(5), focus)
    inside = int(round(batch * fraction))
    plain = model.sample_joint(batch - inside, torch.Generator().manual_seed(5)).y
    assert y.shape == (batch,) and y.dtype == torch.float32
    assert torch.equal(y[: batch - inside], plain)  # the first part is p(y)'s own draws
    window = y[batch - inside :].double().numpy()
    assert window.min() >= centre - half_width - 1e-6 and window.max() <= centre + half_width + 1e-6
    assert stats.kstest(window, stats.uniform(centre - half_width, 2 * half_width).cdf).pvalue > 1e-3


def test_no_focus_draws_from_p_y_alone():
    model = build_model("gmm_open")
    y = draw_observations(model, 64, torch.Generator().manual_seed(2))
    assert torch.equal(y, model.sample_joint(64, torch.Generator().manual_seed(2)).y)


def test_locate_finds_the_switch_of_the_committed_gmm_qp_network():
    """q's mean jumps between gmm's modes near y = 0: its largest move on the grid is there."""
    artifact = load_artifact(ARTIFACTS / "gmm" / "qp.json")
    model = build_model("gmm")
    grid = observation_grid(model, seed=0)
    at = locate(artifact.network, grid)
    with torch.no_grad():
        means = artifact.network(torch.tensor([at - 0.5, at + 0.5])).means[:, 0]
    assert abs(at) < 2 and abs(float(means[1] - means[0])) > 5  # a jump between the modes (+-5) within one unit


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"focus": 0.25}, "together"),
        ({"focus_width": 0.25}, "together"),
        ({"objective": "pq", "focus": 0.25, "focus_width": 0.25}, "qp"),
        ({"focus": 1.0, "focus_width": 0.25}, "less than 1"),
        ({"focus": 0.25, "focus_width": 0}, "greater than 0"),
    ],
)
def test_bad_focus_options_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        Phase(**{"objective": "qp", "steps": 10, **options})


def test_the_recipe_focuses_only_gmm_qp_final_phases():
    gmm_qp = recipe("gmm", "qp").schedule
    assert [(p.focus, p.focus_width) for p in gmm_qp] == [(None, None), (None, None), (0.25, 0.25), (0.25, 0.25)]
    for name, objective in [("gmm", "pq"), ("gmm_open", "qp"), ("gmm_discrete", "qp"), ("gaussian", "qp")]:
        assert all(p.focus is None for p in recipe(name, objective).schedule)
    assert "focus" not in default_schedule("qp", 100)[-1].model_dump()  # a plain phase's manifest is unchanged


@pytest.mark.parametrize("model", ["gaussian", "gmm", "gmm_discrete", "gmm_open"])
@pytest.mark.parametrize("objective", ["pq", "qp"])
def test_the_committed_networks_meet_the_gap_target(model, objective):
    """Each default network's amortisation gap, recomputed from its weights against the exact posterior."""
    artifact = load_artifact(ARTIFACTS / model / f"{objective}.json")
    metrics = evaluate(build_model(model), artifact.network, objective)
    assert metrics["amortisation_gap"] < TARGET_GAP
