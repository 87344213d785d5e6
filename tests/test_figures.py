"""The PNG figures: title and legend inside the image and off the panels, readable with six branches,
an x range covering q and the exact posterior at any y, distinct branch colours in the network outputs."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex

from amortized import figures
from amortized.distributions import BranchedNormal
from amortized.models import MODELS, build_model

# gmm_open with three universes: k = 1 (one component), 2 (two) and 3 (three), so six branches
THREE_UNIVERSES = {
    "universes": [
        {"probability": 0.4, "weights": [1.0], "means": [0.0], "stds": [1.0]},
        {"probability": 0.3, "weights": [0.5, 0.5], "means": [-5.0, 5.0], "stds": [1.0, 1.0]},
        {"probability": 0.3, "weights": [0.3, 0.4, 0.3], "means": [-8.0, 2.0, 9.0], "stds": [1.0, 0.7, 1.5]},
    ],
    "sigma": 1.0,
}
VARIANTS = [(name, None) for name in MODELS] + [("gmm_open", THREE_UNIVERSES)]
IDS = [*MODELS, "gmm_open-3-universes"]


def fake_q(model, batch: int = 1, centre: float = 0.0) -> BranchedNormal:
    """A q that stays near ``centre`` whatever y is, like an MLP far outside the y it was trained on."""
    b = model.num_branches
    means = centre + torch.linspace(-5, 5, b, dtype=torch.float64).expand(batch, b)
    return BranchedNormal(
        torch.full((batch, b), -np.log(b), dtype=torch.float64),
        means.clone(),
        torch.full((batch, b), 1.5, dtype=torch.float64),
    )


def extent(artist, renderer):
    return artist.get_window_extent(renderer)


def overlaps(a, b, slack: float = 1.0) -> bool:
    return a.x0 < b.x1 - slack and b.x0 < a.x1 - slack and a.y0 < b.y1 - slack and b.y0 < a.y1 - slack


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("y", [0.0, 2.5, 1e6, -1e6])
@pytest.mark.parametrize("size", [None, (480, 600), (1600, 1200)])
def test_title_and_legend_inside_the_image_and_off_the_panels(name, params, y, size):
    model = build_model(name, params)
    title = figures.variant_title("gmm_open_k3" if params else name, model)
    figure = figures.posterior_figure(model, [y], {"pq": fake_q(model), "qp": fake_q(model, centre=3.0)}, title, size)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    box = figure.bbox
    if size is not None:
        assert (box.width, box.height) == size
    inside = lambda b: b.x0 >= -0.5 and b.y0 >= -0.5 and b.x1 <= box.width + 0.5 and b.y1 <= box.height + 0.5  # noqa: E731
    title = extent(figure._suptitle, renderer)
    assert inside(title), (title, box)
    (legend,) = figure.legends
    assert inside(extent(legend, renderer))
    for axes in figure.axes:
        assert not overlaps(extent(legend, renderer), axes.get_window_extent(renderer)), "the legend covers a panel"
        assert not overlaps(title, axes.get_window_extent(renderer)), "the title covers a panel"
    bars = [a for a in figure.axes if a.get_ylabel() == "p(branch | y)"]
    if model.num_branches > 1:  # each branch's label readable: none overlaps its neighbour
        labels = [extent(t, renderer) for t in bars[0].get_xticklabels()]
        assert len(labels) == model.num_branches
        assert all(a.x1 <= b.x0 + 0.5 for a, b in zip(labels, labels[1:])), "branch labels run together"


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("y", [0.0, 7.0, 1e6, -1e6, 1e9])
def test_the_x_range_covers_q_and_the_exact_posterior_at_any_y(name, params, y):
    model = build_model(name, params)
    qs = {"pq": fake_q(model)}
    figure = figures.posterior_figure(model, [y], qs)
    panels = [a.get_xlim() for a in figure.axes if a.get_xlabel() == "x"]
    exact = model.exact_posterior(torch.tensor([y], dtype=torch.float64))
    peaks = [(m, s) for p, m, s in zip(exact.probs[0], exact.means[0], exact.stds[0]) if p >= 1e-3]
    peaks += list(zip(qs["pq"].means[0].tolist(), qs["pq"].stds[0].tolist()))
    for mean, std in peaks:  # each visible peak lies in one panel with 3 standard deviations either side
        assert any(low <= mean - 3 * std and mean + 3 * std <= high for low, high in panels), (mean, std, panels)
    for low, high in panels:  # and no panel is so wide that its peaks would be thinner than a pixel
        assert min(s for m, s in peaks if low <= m <= high) > (high - low) / 400


def test_x_panels_split_only_far_apart_groups():
    model = build_model("gmm")
    near = model.exact_posterior(torch.tensor([0.0], dtype=torch.float64))
    assert len(figures.x_panels([near, fake_q(model)], 0)) == 1  # two modes of p and a wide q: one panel
    far = model.exact_posterior(torch.tensor([1e6], dtype=torch.float64))
    assert len(figures.x_panels([far, fake_q(model)], 0)) == 2


@pytest.mark.parametrize(
    ("name", "params"),
    [("gmm_discrete", None), ("gmm_open", None), ("gmm_open", THREE_UNIVERSES)],
    ids=["gmm_discrete", "gmm_open", "gmm_open-3"],
)
def test_network_outputs_give_each_branch_its_colour_and_a_legend(name, params):
    model = build_model(name, params)
    y_grid = torch.linspace(-10, 10, 41, dtype=torch.float64)
    figure = figures.network_outputs_figure(model, {"pq": fake_q(model, 41), "qp": fake_q(model, 41, 1.0)}, y_grid)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    probability_panels = [a for a in figure.axes if a.get_title().endswith("q(branch | y)")]
    assert len(probability_panels) == 2
    for axes in probability_panels:
        solid = [to_hex(line.get_color()) for line in axes.lines if line.get_linestyle() == "-"]
        assert len(solid) == model.num_branches == len(set(solid)), "branches share a colour"
    (legend,) = figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert all(f"branch {figures._branch_label(b)}" in labels for b in model.branches)
    box = figure.bbox
    legend_box = legend.get_window_extent(renderer)
    assert legend_box.x1 <= box.width + 0.5 and legend_box.y0 >= -0.5
    assert not any(overlaps(legend_box, a.get_window_extent(renderer)) for a in figure.axes)
