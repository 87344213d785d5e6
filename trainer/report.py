"""The evaluation table of every artifact in a folder, as text or markdown (for the README)."""

from __future__ import annotations

from pathlib import Path

from amortized.artifacts import discover_artifacts

COLUMNS = ["variant", "family", "loss", "kl_pq", "kl_qp", "limit", "gap", "q std at y=0", "err a", "err b", "err c", "train s"]


def rows(root: Path) -> tuple[list[list[str]], dict[Path, str]]:
    """One row per loadable artifact (checksums verified), and the refused ones with their reasons."""
    loaded, refused = discover_artifacts(root)
    table = []
    for (variant, objective), artifact in sorted(loaded.items()):
        metrics = artifact.manifest.metrics
        linear = metrics.get("linear", {})
        stds = metrics.get("at_y0", {}).get("q", {}).get("stds", [])
        table.append([
            variant,
            artifact.manifest.family,
            objective,
            f"{metrics['kl_pq']:.5f}",
            f"{metrics['kl_qp']:.5f}",
            f"{metrics[f'limit_{objective}']:.5f}",
            f"{metrics['amortisation_gap']:.5f}",
            ", ".join(f"{s:.3f}" for s in stds),
            *(f"{linear[p]['abs_error']:.4f}" if p in linear else "" for p in "abc"),
            f"{artifact.manifest.training_result['seconds']:.1f}",
        ])
    return table, refused


def render(table: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])
    widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(COLUMNS)]
    fmt = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths]), *(fmt(r) for r in table)])


def report(root: Path, markdown: bool = False) -> str:
    table, refused = rows(root)
    text = render(table, markdown)
    notes = [f"REFUSED {path}: {why}" for path, why in refused.items()]
    legend = (
        "kl_* are means over the fixed test set (1000 y from p(y)); limit = best-in-family value of the loss's own "
        "divergence; gap = trained - limit (the amortisation gap); err a/b/c = |a - a*| etc. for gaussian."
    )
    return "\n".join([text, "", legend, *notes])
