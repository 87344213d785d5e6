"""Turn the science's arrays into the JSON-ready answer of the posterior endpoint.

The numbers come from :func:`amortized.diagnostics.analyse` and
:func:`amortized.diagnostics.exact_summary`, vectorised over all observations
of a request in NumPy; this module only lays them out per observation. Arrays
stay NumPy (orjson writes them directly), and orjson writes every NaN or
infinity as null, so a 200 response never carries NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amortized.diagnostics import analyse, exact_summary
from amortized.distributions import BranchedNormal
from service.registry import ServedModel

OTHER = {"pq": "qp", "qp": "pq"}


def latent_column(values: np.ndarray) -> np.ndarray | list[int | None]:
    """Latent values for orjson: the int array itself, or a list with None where the latent does not exist."""
    if (values >= 0).all():
        return values
    out = values.astype(object)
    out[values < 0] = None
    return out.tolist()


def samples_columns(served: ServedModel, branch: np.ndarray, x: np.ndarray) -> list[dict[str, Any]]:
    """Per observation: {"x": [...], latent: [...]} with None where a latent does not exist in a sample."""
    columns = {"x": list(x)}
    for name, table in served.latent_table.items():
        columns[name] = [latent_column(row) for row in table[branch]]
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def probabilities(served: ServedModel, branch_probabilities: np.ndarray) -> list[dict[str, dict[str, float]]]:
    """Per observation: {latent: {value: P(latent = value)}}, from one matrix product."""
    out = []
    for row in (branch_probabilities @ served.value_matrix).tolist():
        nested: dict[str, dict[str, float]] = {name: {} for name in served.latent_table}
        for (name, value), p in zip(served.value_keys, row):
            nested[name][value] = p
        out.append(nested)
    return out


def q_branches(served: ServedModel, q: BranchedNormal) -> list[dict[str, Any]]:
    rows = np.stack([q.probs, q.means, q.stds], -1).tolist()  # (batch, branches, 3)
    return [{"branches": [{"latents": latents, "probability": p, "mean": m, "std": s} for latents, (p, m, s) in zip(served.branch_latents, row)]} for row in rows]


DIAGNOSTIC_FIELDS = ("ess", "ess_fraction", "log_evidence", "log_evidence_se", "elbo", "pareto_k")
EXACT_FIELDS = ("log_evidence", "posterior_mean_x", "posterior_std_x", "kl_pq", "kl_qp")
CHECK_FIELDS = ("log_evidence_other", "log_evidence_other_se", "log_evidence_mixture", "log_evidence_mixture_se")


def results_for(
    served: ServedModel, y: np.ndarray, objective: str, q: BranchedNormal, other: BranchedNormal | None,
    truth: tuple[BranchedNormal, np.ndarray], num_samples: int, seed: int, resample: bool, generator: np.random.Generator,
) -> list[dict[str, Any]]:
    """The answer of one compiled network for every observation in ``y`` (``truth``: exact posterior and evidence)."""
    analysis = analyse(served.model, y, q, num_samples, generator, other=other, resample=resample)
    exact = exact_summary(served.model, truth, q)
    check = analysis.cross_check
    scalars = [getattr(analysis, name) for name in DIAGNOSTIC_FIELDS] + [analysis.mean_x, analysis.std_x]
    scalars += [exact[name] for name in ("log_evidence", "mean_x", "std_x", "kl_pq", "kl_qp")]
    if check is not None:
        scalars += [getattr(check, name) for name in CHECK_FIELDS]
    rows = np.stack(scalars, -1).tolist()
    flags = np.stack([check.consistent, check.misses_mass], -1).tolist() if check is not None else None
    samples = samples_columns(served, analysis.branch, analysis.x)
    resampled = samples_columns(served, analysis.resampled_branch, analysis.resampled_x) if resample else None
    estimated, truth = probabilities(served, analysis.branch_probabilities), probabilities(served, exact["branch_probabilities"])
    out = []
    for i, (y_i, q_i, row) in enumerate(zip(y.tolist(), q_branches(served, q), rows)):
        diagnostics = dict(zip(DIAGNOSTIC_FIELDS, row[:6]))
        diagnostics.update(
            num_samples=num_samples, verdict=analysis.verdict[i], reason=analysis.reason[i],
            posterior_mean_x=row[6], posterior_std_x=row[7], discrete_probabilities=estimated[i], cross_check=None,
        )
        if check is not None:
            diagnostics["cross_check"] = {
                "other_objective": OTHER[objective], **dict(zip(CHECK_FIELDS, row[13:])),
                "consistent": flags[i][0], "misses_mass": flags[i][1],
            }
        result = {
            "model": served.model.name, "seed": seed, "y": y_i, "objective": objective, "q": q_i,
            "samples": samples[i], "log_weights": analysis.log_weights[i],
            "diagnostics": diagnostics,
            "exact": {**dict(zip(EXACT_FIELDS, row[8:13])), "discrete_probabilities": truth[i]},
        }
        if resample:
            result["resampled"] = resampled[i]
        out.append(result)
    return out


def answer(
    served: ServedModel, y: list[float], objective: str, num_samples: int, seed: int, resample: bool, cross_check: bool
) -> list[dict[str, Any]]:
    """Per observation: one network's result, or {"objectives": {...}} for "both"."""
    objectives = ["pq", "qp"] if objective == "both" else [objective]
    y_array = np.asarray(y, dtype=np.float64)
    generator = np.random.default_rng(seed)
    needed = set(objectives) | ({OTHER[o] for o in objectives} & set(served.artifacts) if cross_check else set())
    qs = {name: served.forward[name](y_array) for name in needed}
    truth = served.model.exact_posterior_and_evidence(y_array)  # shared by both objectives
    per_objective = {
        name: results_for(
            served, y_array, name, qs[name], qs.get(OTHER[name]) if cross_check else None, truth,
            num_samples, seed, resample, generator,
        )
        for name in objectives
    }
    if objective != "both":
        return per_objective[objective]
    return [
        {"model": served.model.name, "seed": seed, "y": y_i, "objectives": dict(zip(objectives, row))}
        for y_i, *row in zip(y, *per_objective.values())
    ]
