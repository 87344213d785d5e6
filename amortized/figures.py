"""The seed's figures, as PNG bytes: q against the exact posterior, and the network outputs against y.

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state,
no rcParams changes), so the trainer and the HTTP service can both call these
from any thread. Titles are shrunk until they fit the image and legends sit
outside the panels, so neither covers data at any size. The x range of a
density panel covers every visible branch of q and component of p; when they
lie far apart (y = 1e6, where an MLP has never been), the x axis is broken
into one panel per group, each wide enough to show its peaks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from amortized.distributions import BranchedNormal  # noqa: E402
from amortized.evaluation import best_in_family, test_observations  # noqa: E402
from amortized.mixture import model_branch_probabilities, slots_per_branch  # noqa: E402
from amortized.models import ConjugateMixtureModel  # noqa: E402
from amortized.networks import InferenceNetwork  # noqa: E402

DPI = 100
PNG_WIDTH, PNG_HEIGHT, PNG_HEIGHT_BRANCHES = 640, 430, 750  # one observation's figure, pixels (without / with bars)
COLOURS = {"pq": "tab:blue", "qp": "tab:orange", "exact": "0.55"}
EXACT_FILL = "0.82"
LABELS = {"pq": "q, pq loss (mass-covering)", "qp": "q, qp loss (mode-seeking)"}
BRANCH_COLOURS = [
    "tab:blue",
    "tab:red",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:cyan",
    "tab:olive",
    "tab:gray",
    "tab:orange",
]
VISIBLE = 1e-3  # branches and components below this probability do not widen the x range
HALF_WIDTH = 4.5  # standard deviations shown either side of each peak
MAX_PANELS = 4  # groups of peaks farther apart than they are wide get their own x panel, at most this many
LegendPlace = Literal["outside lower center", "outside right upper"]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _branch_label(branch: dict[str, int], sep: str = ",") -> str:
    return sep.join(f"{k}={v}" for k, v in branch.items()) or "x"


def _fit_title(figure: Figure, text: str, largest: float) -> None:
    """A suptitle at the largest font size (down to 6 pt) whose width fits inside the image."""
    title = figure.suptitle(text, fontsize=largest)
    renderer = FigureCanvasAgg(figure).get_renderer()
    room = 0.96 * figure.get_figwidth() * figure.dpi
    size = largest
    while size > 6 and title.get_window_extent(renderer).width > room:
        size -= 0.5
        title.set_fontsize(size)


def _fit_legend(
    figure: Figure, handles: list[Artist], labels: list[str], font: float, loc: LegendPlace = "outside lower center"
) -> None:
    """A figure legend outside the panels, in as many columns as fit the image's width (at least one)."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    room = 0.98 * figure.get_figwidth() * figure.dpi
    for ncols in range(len(labels), 0, -1):
        legend = figure.legend(handles, labels, loc=loc, ncols=ncols, fontsize=font, frameon=False)
        if ncols == 1 or legend.get_window_extent(renderer).width <= room:
            return
        legend.remove()


def _from_zero(axes) -> None:
    """y from 0 to a little above the highest line (a flat line would otherwise sit on the frame)."""
    top = max(float(np.nanmax(np.asarray(line.get_ydata(), dtype=np.float64))) for line in axes.lines)
    axes.set_ylim(0, 1.12 * top if top > 0 else 1)


def _font(width_px: float) -> float:
    """Base font size for panels about ``width_px`` wide: 7.5 to 11 pt."""
    return float(np.clip(width_px / 38, 7.5, 11))


def x_panels(dists: Sequence[BranchedNormal], index: int) -> list[tuple[float, float]]:
    """x intervals covering every visible peak of ``dists`` at observation ``index``, one per group of nearby peaks.

    Each peak spans mean +- 4.5 std; overlapping spans join, and so do
    neighbours whose gap is less than 1.5 times the wider of the two, so that
    ordinary posteriors get one panel and only far-apart groups are split
    (at most ``MAX_PANELS``, joining the closest first).
    """
    spans = []
    for dist in dists:
        probs = np.asarray(dist.probs[index], dtype=np.float64)
        means = np.asarray(dist.means[index], dtype=np.float64)
        stds = np.asarray(dist.stds[index], dtype=np.float64)
        keep = (probs >= VISIBLE) | (probs == probs.max())
        spans += [[m - HALF_WIDTH * s, m + HALF_WIDTH * s] for m, s in zip(means[keep], stds[keep])]
    spans.sort()
    merged: list[list[float]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    while len(merged) > 1:
        ratios = [
            (merged[i + 1][0] - merged[i][1]) / max(merged[i][1] - merged[i][0], merged[i + 1][1] - merged[i + 1][0])
            for i in range(len(merged) - 1)
        ]
        i = int(np.argmin(ratios))
        if ratios[i] > 1.5 and len(merged) <= MAX_PANELS:
            break
        merged[i : i + 2] = [[merged[i][0], merged[i + 1][1]]]
    return [(low, high) for low, high in merged]


def _grid(low: float, high: float, dists: Sequence[BranchedNormal], index: int, points: int = 500) -> np.ndarray:
    """Points over [low, high], plus 81 around each peak inside it, so that no narrow peak loses its height."""
    xs = [np.linspace(low, high, points)]
    for dist in dists:
        for m, s in zip(
            np.asarray(dist.means[index], dtype=np.float64), np.asarray(dist.stds[index], dtype=np.float64)
        ):
            if low <= m <= high:
                xs.append(np.linspace(max(low, m - HALF_WIDTH * s), min(high, m + HALF_WIDTH * s), 81))
    return np.unique(np.concatenate(xs))


def _density_panels(
    figure: Figure, cell, exact: BranchedNormal, qs: dict[str, BranchedNormal], index: int, y: float, font: float
) -> list:
    """One column's density: exact p(x|y) filled, each q a line, on one x panel per group of peaks."""
    dists = [exact, *qs.values()]
    intervals = x_panels(dists, index)
    grid = cell.subgridspec(1, len(intervals), wspace=0.06)
    axes = [figure.add_subplot(grid[0, i]) for i in range(len(intervals))]
    top = 0.0
    for ax, (low, high) in zip(axes, intervals):
        x = _grid(low, high, dists, index)
        p = np.exp(np.asarray(exact[index : index + 1].log_density_x(torch.as_tensor(x)[None]), dtype=np.float64)[0])
        ax.fill_between(x, p, color=EXACT_FILL, lw=0)
        ax.plot(x, p, color=COLOURS["exact"], lw=0.8)
        top = max(top, p.max())
        for objective, q in qs.items():
            density = np.exp(
                np.asarray(
                    q[index : index + 1].to(torch.float64).log_density_x(torch.as_tensor(x)[None]), dtype=np.float64
                )[0]
            )
            ax.plot(x, density, color=COLOURS.get(objective, "k"), lw=1.6)
            top = max(top, density.max())
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=max(2, 5 // len(intervals)), min_n_ticks=2))
        ax.tick_params(labelsize=font - 1)
    for i, ax in enumerate(axes):
        ax.set_ylim(0, 1.08 * top if top > 0 else 1)
        if i > 0:  # a broken axis: no spine or y ticks between the panels, and // marks on the break
            ax.spines["left"].set_visible(False)
            ax.tick_params(left=False, labelleft=False)
        if i < len(axes) - 1:
            ax.spines["right"].set_visible(False)
        for edge in ([0] if i > 0 else []) + ([1] if i < len(axes) - 1 else []):
            ax.plot(
                [edge, edge],
                [0, 1],
                transform=ax.transAxes,
                marker=[(-1, -1), (1, 1)],
                markersize=7,
                linestyle="none",
                color="k",
                mec="k",
                mew=1,
                clip_on=False,
            )
        ax.set_xlabel("x", fontsize=font)
    axes[0].set_ylabel("density", fontsize=font)
    broken = " · x axis broken" if len(axes) > 1 else ""
    axes[0].set_title(f"y = {y:.4g}{broken}", fontsize=font + 1, loc="left")
    return axes


def _branch_panel(
    axes, model: ConjugateMixtureModel, exact: BranchedNormal, qs: dict[str, BranchedNormal], index: int, font: float
) -> None:
    """p(branch | y) and each q(branch | y) as grouped bars, one group per branch, labelled a latent per line."""
    probs = {"exact": model.branch_probabilities(exact)[index]}
    probs |= {o: model_branch_probabilities(q, model)[index] for o, q in qs.items()}  # a mixture's K slots summed
    width = 0.84 / len(probs)
    for i, (name, p) in enumerate(probs.items()):
        positions = [b + (i - (len(probs) - 1) / 2) * width for b in range(model.num_branches)]
        axes.bar(
            positions,
            np.asarray(p, dtype=np.float64),
            width,
            color=EXACT_FILL if name == "exact" else COLOURS.get(name, "0.4"),
            edgecolor=COLOURS["exact"] if name == "exact" else "none",
            lw=0.6,
        )
    many = model.num_branches > 3
    axes.set_xticks(
        range(model.num_branches), [_branch_label(b, "\n" if many else ",") for b in model.branches], fontsize=font - 1
    )
    axes.set_xlim(-0.6, model.num_branches - 0.4)
    axes.set_ylim(0, 1.02)
    axes.tick_params(axis="y", labelsize=font - 1)
    axes.set_ylabel("p(branch | y)", fontsize=font)


def _legend_handles(qs: dict[str, BranchedNormal]) -> tuple[list[Artist], list[str]]:
    handles: list[Artist] = [Patch(facecolor=EXACT_FILL, edgecolor=COLOURS["exact"], lw=0.8)]
    labels = ["exact posterior p(. | y)"]
    for objective in qs:
        handles.append(Line2D([], [], color=COLOURS.get(objective, "k"), lw=2.5))
        labels.append(LABELS.get(objective, objective))
    return handles, labels


def variant_title(name: str, model: ConjugateMixtureModel) -> str:
    """A figure's title: the family's title, led by the variant's name when it is not the family's default one."""
    return model.title if name == model.name else f"{name} ({model.title})"


def posterior_figure(
    model: ConjugateMixtureModel,
    ys: list[float],
    qs: dict[str, BranchedNormal],
    title: str | None = None,
    size: tuple[int, int] | None = None,
) -> Figure:
    y = torch.tensor(ys, dtype=torch.float64)
    exact = model.exact_posterior(y)
    rows = 2 if model.num_branches > 1 else 1
    if size is None and len(ys) == 1:
        size_in = (PNG_WIDTH / DPI, (PNG_HEIGHT_BRANCHES if rows == 2 else PNG_HEIGHT) / DPI)
    elif size is None:
        size_in = (3.4 * len(ys), 2.8 * rows + 1.1)
    else:
        size_in = (size[0] / DPI, size[1] / DPI)
    figure = Figure(figsize=size_in, dpi=DPI, layout="constrained")
    font = _font(size_in[0] * DPI / len(ys))
    grid = figure.add_gridspec(rows, len(ys), height_ratios=[1.25, 1][:rows])
    for i, value in enumerate(ys):
        _density_panels(figure, grid[0, i], exact, qs, i, value, font)
        if rows == 2:
            _branch_panel(figure.add_subplot(grid[1, i]), model, exact, qs, i, font)
    handles, labels = _legend_handles(qs)
    _fit_legend(figure, handles, labels, font)
    _fit_title(figure, f"{title or model.title}: q(x | y) against the exact posterior", font + 3)
    return figure


def posterior_png(
    model: ConjugateMixtureModel,
    y: float,
    posteriors: dict[str, BranchedNormal],
    title: str | None = None,
    size: tuple[int, int] | None = None,
) -> bytes:
    """One observation: exact p(x|y) and each q (batch of 1), with branch probabilities if any; ``size`` in pixels."""
    return _png(posterior_figure(model, [y], posteriors, title, size))


def posterior_grid_png(
    model: ConjugateMixtureModel, ys: list[float], posteriors: dict[str, BranchedNormal], title: str | None = None
) -> bytes:
    """The seed's first plot: several test observations side by side (posteriors batched over ``ys``)."""
    return _png(posterior_figure(model, ys, posteriors, title))


def _outputs_one_branch(
    model: ConjugateMixtureModel, posteriors: dict[str, BranchedNormal], y_grid: torch.Tensor, title: str
) -> Figure:
    """Mean and std of q(x|y) against y, one colour per loss, with the exact components and the best in q's family."""
    exact = model.exact_posterior(y_grid)
    figure = Figure(figsize=(10.5, 3.8), dpi=DPI, layout="constrained")
    mean_axes, std_axes = figure.subplots(1, 2)
    y = y_grid.numpy()
    several = exact.means.shape[-1] > 1
    for c in range(exact.means.shape[-1]):
        label = ("exact, each component of p(x | y)" if several else "exact p(x | y)") if c == 0 else None
        mean_axes.plot(y, exact.means[:, c], "k--", lw=0.9, label=label, zorder=3)  # on top: q often hides it otherwise
        std_axes.plot(y, exact.stds[:, c], "k--", lw=0.9, zorder=3)
    single = all(q.num_branches == model.num_branches for q in posteriors.values())  # the single-normal family's optima
    if not model.family_contains_posterior and single:
        for objective, style, what in (("pq", ":", "moment-matched"), ("qp", "-.", "mode fit")):
            best = best_in_family(model, y_grid, objective)
            assert best is not None  # None only for a family that contains the posterior, excluded above
            mean_axes.plot(
                y, best.means[:, 0], style, color="0.45", lw=1.4, label=f"best {objective} in q's family ({what})"
            )
            std_axes.plot(y, best.stds[:, 0], style, color="0.45", lw=1.4)
    for objective, q in posteriors.items():
        mean_axes.plot(
            y,
            q.means[:, 0].double(),
            color=COLOURS.get(objective),
            lw=1.8,
            alpha=0.9,
            label=LABELS.get(objective, objective),
        )
        std_axes.plot(y, q.stds[:, 0].double(), color=COLOURS.get(objective), lw=1.8, alpha=0.9)
    mean_axes.set_title("mean of q(x | y)")
    std_axes.set_title("std of q(x | y)")
    _from_zero(std_axes)
    for axes in (mean_axes, std_axes):
        axes.set_xlabel("y")
    figure.legend(
        *mean_axes.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small", frameon=False
    )
    _fit_title(figure, f"{title}: network outputs against y", 12)
    return figure


def _outputs_branched(
    model: ConjugateMixtureModel, posteriors: dict[str, BranchedNormal], y_grid: torch.Tensor, title: str
) -> Figure:
    """One row per loss: mean, std and q(branch | y) of each branch against y, a colour per branch, exact dashed.

    A mixture network's K normals per branch are drawn each in their branch's colour; q(branch | y) sums them.
    """
    exact = model.exact_posterior(y_grid)
    exact_probs = model.branch_probabilities(exact)
    rows = len(posteriors)
    figure = Figure(figsize=(13.5, 3.1 * rows + 0.5), dpi=DPI, layout="constrained")
    grid = figure.subplots(rows, 3, squeeze=False, sharex=True)
    y = y_grid.numpy()
    colour = [BRANCH_COLOURS[b % len(BRANCH_COLOURS)] for b in range(model.num_branches)]
    for row, (objective, q) in enumerate(posteriors.items()):
        mean_axes, std_axes, prob_axes = grid[row]
        components = slots_per_branch(q, model)
        for slot in range(q.num_branches):  # q-branch b * K + j: slot j of branch b
            mean_axes.plot(y, q.means[:, slot].double(), color=colour[slot // components], lw=1.8, alpha=0.85)
            std_axes.plot(y, q.stds[:, slot].double(), color=colour[slot // components], lw=1.8, alpha=0.85)
        q_probs = model_branch_probabilities(q, model)
        for b in range(model.num_branches):
            prob_axes.plot(y, q_probs[:, b].double(), color=colour[b], lw=1.8, alpha=0.85)
            prob_axes.plot(y, exact_probs[:, b], "--", color=colour[b], lw=1.1)
        for c, b in enumerate(model.component_branch.tolist()):
            mean_axes.plot(y, exact.means[:, c], "--", color=colour[b], lw=1.1)
            std_axes.plot(y, exact.stds[:, c], "--", color=colour[b], lw=1.1)
        loss = LABELS.get(objective, objective).removeprefix("q, ")
        mean_axes.set_title(f"{loss}: mean of q(x | y, branch)", fontsize="medium")
        std_axes.set_title(f"{loss}: std of q(x | y, branch)", fontsize="medium")
        prob_axes.set_title(f"{loss}: q(branch | y)", fontsize="medium")
        _from_zero(std_axes)
        prob_axes.set_ylim(-0.02, 1.02)
    for axes in grid[-1]:
        axes.set_xlabel("y")
    handles = [Line2D([], [], color=colour[b], lw=2.5) for b in range(model.num_branches)]
    labels = [f"branch {_branch_label(branch)}" for branch in model.branches]
    handles += [Line2D([], [], color="0.3", lw=1.8), Line2D([], [], color="0.3", lw=1.1, ls="--")]
    labels += ["q (the network)", "exact p(x | y, branch)"]
    figure.legend(
        handles, labels, loc="outside right upper", fontsize="small", title="colour: branch", title_fontsize="small"
    )
    _fit_title(figure, f"{title}: network outputs against y", 12)
    return figure


def network_outputs_figure(
    model: ConjugateMixtureModel, posteriors: dict[str, BranchedNormal], y_grid: torch.Tensor, title: str | None = None
) -> Figure:
    """The seed's second plot: q's means, stds (and branch probabilities) as functions of y, against the truth."""
    if model.num_branches == 1:
        return _outputs_one_branch(model, posteriors, y_grid, title or model.title)
    return _outputs_branched(model, posteriors, y_grid, title or model.title)


def network_outputs_png(
    model: ConjugateMixtureModel, posteriors: dict[str, BranchedNormal], y_grid: torch.Tensor, title: str | None = None
) -> bytes:
    return _png(network_outputs_figure(model, posteriors, y_grid, title))


def model_figures(
    model: ConjugateMixtureModel, networks: dict[str, InferenceNetwork], title: str | None = None
) -> dict[str, bytes]:
    """Both figures of one model (a variant: ``title`` names it), for every compiled objective: {file name: PNG}."""
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    ys = torch.quantile(test_observations(model), quantiles).tolist()
    y_grid = torch.linspace(model.y_loc - 3 * model.y_scale, model.y_loc + 3 * model.y_scale, 401, dtype=torch.float64)
    with torch.no_grad():
        at_ys = {o: net(torch.tensor(ys, dtype=torch.float32)) for o, net in networks.items()}
        on_grid = {o: net(y_grid.float()) for o, net in networks.items()}
    return {
        "posteriors.png": posterior_grid_png(model, ys, at_ys, title),
        "network_outputs.png": network_outputs_png(model, on_grid, y_grid, title),
    }
