"""The evaluation table of every artifact in a folder, as text or markdown (for the README)."""

from __future__ import annotations

from pathlib import Path

from amortized.artifacts import discover_artifacts

COLUMNS = [
    "variant",
    "family",
    "loss",
    "kl_pq",
    "kl_qp",
    "limit",
    "gap",
    "q std at y=0",
    "err a",
    "err b",
    "err c",
    "train s",
]
CALIBRATION_COLUMNS = [
    "variant",
    "loss",
    "q 50%",
    "q 80%",
    "q 95%",
    "SIR 50%",
    "SIR 80%",
    "SIR 95%",
    "SBC chi2",
    "SBC p",
]


def number(value, digits: int = 5) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00000" for a limit of zero


def loss_label(artifact) -> str:
    """The loss, with the mixture family's K where the network has more than one normal per branch."""
    k = artifact.manifest.architecture.get("mixture_components", 1)
    return artifact.manifest.objective + (f" K={k}" if k > 1 else "")


def rows(root: Path) -> tuple[list[list[str]], dict[Path, str]]:
    """One row per loadable artifact (checksums verified), and the refused ones with their reasons."""
    loaded, refused = discover_artifacts(root)
    table = []
    for (variant, objective), artifact in sorted(loaded.items()):
        metrics = artifact.manifest.metrics
        linear = metrics.get("linear", {})
        stds = metrics.get("at_y0", {}).get("q", {}).get("stds", [])
        table.append(
            [
                variant,
                artifact.manifest.family,
                loss_label(artifact),
                f"{metrics['kl_pq']:.5f}",
                f"{metrics['kl_qp']:.5f}",
                number(metrics[f"limit_{objective}"]),
                number(metrics["amortisation_gap"]),
                ", ".join(f"{s:.3f}" for s in stds),
                *(f"{linear[p]['abs_error']:.4f}" if p in linear else "" for p in "abc"),
                f"{artifact.manifest.training_result['seconds']:.1f}",
            ]
        )
    return table, refused


def calibration_rows(root: Path) -> list[list[str]]:
    """One row per artifact with ``metrics.calibration``: expected coverage of q and of SIR, SBC test."""
    loaded, _ = discover_artifacts(root)
    table = []
    for (model, _objective), artifact in sorted(loaded.items()):
        calibration = artifact.manifest.metrics.get("calibration")
        if not calibration:
            continue
        sbc = calibration["sbc"]
        table.append(
            [
                model,
                loss_label(artifact),
                *(f"{v:.3f}" for v in calibration["coverage_q"]),
                *(f"{v:.3f}" for v in calibration["coverage_resampled"]),
                f"{sbc['statistic']:.1f}",
                f"{sbc['p_value']:.3g}",
            ]
        )
    return table


def render(table: list[list[str]], markdown: bool, columns: list[str] = COLUMNS) -> str:
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])
    widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)]
    fmt = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths]), *(fmt(r) for r in table)])


def report(root: Path, markdown: bool = False) -> tuple[str, int]:
    """The evaluation and calibration tables of the artifacts under ``root``, and how many were refused.

    A refused artifact (malformed manifest, failed checksum) is listed under the tables with its reason.
    """
    table, refused = rows(root)
    text = render(table, markdown)
    notes = [f"REFUSED {path}: {why}" for path, why in refused.items()]
    legend = (
        "kl_* are means over the fixed test set (1000 y from p(y)); limit = best-in-family value of the loss's own "
        "divergence; gap = trained - limit (the amortisation gap); err a/b/c = |a - a*| etc. for gaussian."
    )
    calibration = calibration_rows(root)
    if calibration:
        calibration_legend = (
            "Calibration (amortized/calibration.py): q a% = expected coverage of q's central a% credible interval for "
            "x, "
            "the mean over the test set of the exact posterior mass on it (a for a calibrated q); SIR a% = the same "
            "for "
            "the importance-resampled answer at num_samples = 1000; SBC = rank of the true x among 99 draws of q(x|y) "
            "over 1000 joint draws, chi-square test of uniformity on 20 bins (19 dof; Talts et al. 2018, "
            "arXiv:1804.06788)."
        )
        text += "\n\n" + render(calibration, markdown, CALIBRATION_COLUMNS)
        legend += "\n" + calibration_legend
    return "\n".join([text, "", legend, *notes]), len(refused)
