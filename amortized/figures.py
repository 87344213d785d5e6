"""The seed's figures, as PNG bytes: q against the exact posterior, and the network outputs against y.

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state),
so the trainer and the HTTP service can both call these from any thread.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from amortized.distributions import BranchedNormal  # noqa: E402
from amortized.evaluation import best_in_family, test_observations  # noqa: E402
from amortized.models import ConjugateMixtureModel  # noqa: E402
from amortized.networks import InferenceNetwork  # noqa: E402

COLOURS = {"pq": "tab:blue", "qp": "tab:orange"}
LABELS = {"pq": "q, pq loss (mass-covering)", "qp": "q, qp loss (mode-seeking)"}


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _branch_label(branch: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in branch.items()) or "x"


def _model_branch_probs(model: ConjugateMixtureModel, q: BranchedNormal) -> torch.Tensor:
    """q(b | y) per model branch ``(batch, branches)``: a mixture network's K components of a branch summed."""
    probs = q.probs.double()
    return probs.reshape(len(probs), model.num_branches, -1).sum(-1)


def _x_grid(dists: list[BranchedNormal], index: int, points: int = 600) -> torch.Tensor:
    """A grid covering every branch of every distribution for observation ``index``."""
    means = torch.cat([d.means[index].double() for d in dists])
    stds = torch.cat([d.stds[index].double() for d in dists])
    low, high = (means - 4 * stds).min().item(), (means + 4 * stds).max().item()
    return torch.linspace(low, high, points, dtype=torch.float64)


def _density_panel(axes, model, exact: BranchedNormal, qs: dict[str, BranchedNormal], index: int, y: float) -> None:
    x = _x_grid([exact, *qs.values()], index)
    axes.fill_between(x, exact[index : index + 1].log_density_x(x[None]).exp()[0], color="0.8", label="exact p(x|y)")
    for objective, q in qs.items():
        density = q[index : index + 1].to(torch.float64).log_density_x(x[None]).exp()[0]
        axes.plot(x, density, color=COLOURS.get(objective), label=LABELS.get(objective, objective))
    axes.set_title(f"y = {y:.4g}")
    axes.set_xlabel("x")


def _branch_panel(axes, model, exact: BranchedNormal, qs: dict[str, BranchedNormal], index: int) -> None:
    probs = {"exact": model.branch_probabilities(exact)[index]} | {o: _model_branch_probs(model, q)[index] for o, q in qs.items()}
    width = 0.8 / len(probs)
    for i, (name, p) in enumerate(probs.items()):
        positions = [b + (i - (len(probs) - 1) / 2) * width for b in range(model.num_branches)]
        axes.bar(positions, p.tolist(), width, color=COLOURS.get(name, "0.6"), label=name)
    axes.set_xticks(range(model.num_branches), [_branch_label(b) for b in model.branches])
    axes.set_ylim(0, 1)
    axes.set_ylabel("probability")


def _posteriors(model: ConjugateMixtureModel, ys: list[float], qs: dict[str, BranchedNormal]) -> Figure:
    y = torch.tensor(ys, dtype=torch.float64)
    exact = model.exact_posterior(y)
    rows = 2 if model.num_branches > 1 else 1
    figure = Figure(figsize=(3.4 * len(ys), 3.0 * rows), layout="constrained")
    grid = figure.subplots(rows, len(ys), squeeze=False)
    for i, value in enumerate(ys):
        _density_panel(grid[0, i], model, exact, qs, i, value)
        if rows == 2:
            _branch_panel(grid[1, i], model, exact, qs, i)
    grid[0, 0].set_ylabel("density")
    grid[0, 0].legend(fontsize="small")
    if rows == 2:
        grid[1, 0].legend(fontsize="small")
    figure.suptitle(f"{model.title}: q(x|y) against the exact posterior")
    return figure


def posterior_png(model: ConjugateMixtureModel, y: float, posteriors: dict[str, BranchedNormal]) -> bytes:
    """One observation: exact p(x|y) and each q (batch of 1), with branch probabilities if any."""
    return _png(_posteriors(model, [y], posteriors))


def posterior_grid_png(model: ConjugateMixtureModel, ys: list[float], posteriors: dict[str, BranchedNormal]) -> bytes:
    """The seed's first plot: several test observations side by side (posteriors batched over ``ys``)."""
    return _png(_posteriors(model, ys, posteriors))


def network_outputs_png(model: ConjugateMixtureModel, posteriors: dict[str, BranchedNormal], y_grid: torch.Tensor) -> bytes:
    """The seed's second plot: q's means, stds (and branch probabilities) as functions of y, against the truth."""
    exact = model.exact_posterior(y_grid)
    panels = 3 if model.num_branches > 1 else 2
    figure = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    mean_axes, std_axes, *rest = figure.subplots(1, panels)
    y = y_grid.numpy()
    for c in range(exact.means.shape[-1]):
        label = "exact, per component" if c == 0 else None
        mean_axes.plot(y, exact.means[:, c], "k--", lw=0.8, label=label)
        std_axes.plot(y, exact.stds[:, c], "k--", lw=0.8, label=label)
    single = all(q.num_branches == model.num_branches for q in posteriors.values())  # the single-normal family's optima
    if not model.family_contains_posterior and single:
        for objective, style in (("pq", ":"), ("qp", "-.")):
            best = best_in_family(model, y_grid, objective)
            mean_axes.plot(y, best.means[:, 0], style, color="0.4", label=f"best {objective} in family")
            std_axes.plot(y, best.stds[:, 0], style, color="0.4", label=f"best {objective} in family")
    for objective, q in posteriors.items():
        k = q.num_branches // model.num_branches  # a mixture network: K normals per branch, each drawn
        for g in range(q.num_branches):
            branch = model.branches[g // k]
            label = f"{objective} {_branch_label(branch)}" if model.num_branches > 1 else objective
            label += f" component {g % k}" if k > 1 else ""
            mean_axes.plot(y, q.means[:, g].double(), color=COLOURS.get(objective), alpha=0.9, label=label)
            std_axes.plot(y, q.stds[:, g].double(), color=COLOURS.get(objective), alpha=0.9, label=label)
        if rest:
            for b, branch in enumerate(model.branches):
                label = f"{objective} {_branch_label(branch)}"
                rest[0].plot(y, _model_branch_probs(model, q)[:, b], color=COLOURS.get(objective), label=label)
    if rest:
        for b, p in enumerate(model.branch_probabilities(exact).T):
            rest[0].plot(y, p, "k--", lw=0.8, label="exact" if b == 0 else None)
        rest[0].set_title("q(branch | y)")
        rest[0].set_xlabel("y")
    mean_axes.set_title("mean of q(x|y, branch)")
    std_axes.set_title("std of q(x|y, branch)")
    for axes in (mean_axes, std_axes):
        axes.set_xlabel("y")
    mean_axes.legend(fontsize="x-small")
    figure.suptitle(f"{model.title}: network outputs against y")
    return _png(figure)


def model_figures(model: ConjugateMixtureModel, networks: dict[str, InferenceNetwork]) -> dict[str, bytes]:
    """Both figures of one model, for every compiled objective: {file name: PNG}."""
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    ys = torch.quantile(test_observations(model), quantiles).tolist()
    y_grid = torch.linspace(model.y_loc - 3 * model.y_scale, model.y_loc + 3 * model.y_scale, 401, dtype=torch.float64)
    with torch.no_grad():
        at_ys = {o: net(torch.tensor(ys, dtype=torch.float32)) for o, net in networks.items()}
        on_grid = {o: net(y_grid.float()) for o, net in networks.items()}
    return {
        "posteriors.png": posterior_grid_png(model, ys, at_ys),
        "network_outputs.png": network_outputs_png(model, on_grid, y_grid),
    }
