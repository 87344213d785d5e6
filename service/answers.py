"""Turn the science's tensors into the JSON-ready answer of the posterior endpoint.

The numbers come from :func:`amortized.diagnostics.analyse` and
:func:`amortized.diagnostics.exact_summary`, vectorised over all observations
of a request; this module only lays them out per observation. Arrays stay
numpy (orjson writes them directly), and every non-finite number becomes null
so that a 200 response never carries NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from amortized.diagnostics import PosteriorAnalysis, analyse, exact_summary, latent_marginals
from amortized.distributions import BranchedNormal
from service.registry import ServedModel

OTHER = {"pq": "qp", "qp": "pq"}


def finite_or_none(values: torch.Tensor) -> list[float | None]:
    """A 1-D tensor as floats, NaN and infinities as None."""
    return [v if math.isfinite(v) else None for v in values.tolist()]


def finite_array(values: torch.Tensor) -> np.ndarray | list[float | None]:
    """A numpy array for orjson, or a list with None where a value is not finite (rare)."""
    array = values.numpy()
    return array if np.isfinite(array).all() else [v if math.isfinite(v) else None for v in array.tolist()]


def samples_columns(served: ServedModel, branch: torch.Tensor, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per observation: {"x": [...], latent: [...]} with None where a latent does not exist in a sample."""
    columns = {"x": [finite_array(row) for row in x]}
    for name, table in served.latent_table.items():
        values = table[branch.numpy()]
        columns[name] = [row if (row >= 0).all() else [int(v) if v >= 0 else None for v in row] for row in values]
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def probabilities(served: ServedModel, branch_probabilities: torch.Tensor) -> list[dict[str, dict[str, float]]]:
    """Per observation: {latent: {value: P(latent = value)}}."""
    marginals = latent_marginals(served.model, branch_probabilities)
    flat = {(name, str(value)): p.tolist() for name, values in marginals.items() for value, p in values.items()}
    out = []
    for i in range(len(branch_probabilities)):
        row: dict[str, dict[str, float]] = {name: {} for name in marginals}
        for (name, value), p in flat.items():
            row[name][value] = p[i]
        out.append(row)
    return out


def q_branches(served: ServedModel, q: BranchedNormal) -> list[dict[str, Any]]:
    probs, means, stds = q.probs.tolist(), q.means.tolist(), q.stds.tolist()
    return [
        {"branches": [{"latents": latents, "probability": p, "mean": m, "std": s} for latents, p, m, s in zip(served.branch_latents, *row)]}
        for row in zip(probs, means, stds)
    ]


def cross_checks(analysis: PosteriorAnalysis, other: str) -> list[dict[str, Any] | None]:
    check = analysis.cross_check
    if check is None:
        return [None] * len(analysis.verdict)
    columns = [finite_or_none(t) for t in (check.log_evidence_other, check.log_evidence_other_se, check.log_evidence_mixture, check.log_evidence_mixture_se)]
    return [
        {"other_objective": other, "log_evidence_other": a, "log_evidence_other_se": b, "log_evidence_mixture": c,
         "log_evidence_mixture_se": d, "consistent": ok, "misses_mass": misses}
        for a, b, c, d, ok, misses in zip(*columns, check.consistent.tolist(), check.misses_mass.tolist())
    ]


def results_for(
    served: ServedModel, y: torch.Tensor, objective: str, q: BranchedNormal, other: BranchedNormal | None,
    num_samples: int, seed: int, resample: bool, generator: torch.Generator,
) -> list[dict[str, Any]]:
    """The answer of one compiled network for every observation in ``y``."""
    analysis = analyse(served.model, y, q, num_samples, generator, other=other, resample=resample)
    exact = exact_summary(served.model, y, q)
    diagnostics_columns = zip(
        *(finite_or_none(getattr(analysis, name)) for name in ("ess", "ess_fraction", "log_evidence", "log_evidence_se", "elbo", "pareto_k", "mean_x", "std_x")),
        analysis.verdict, analysis.reason, probabilities(served, analysis.branch_probabilities), cross_checks(analysis, OTHER[objective]),
    )
    exact_columns = zip(
        *(finite_or_none(exact[name]) for name in ("log_evidence", "mean_x", "std_x", "kl_pq", "kl_qp")),
        probabilities(served, exact["branch_probabilities"]),
    )
    samples = samples_columns(served, analysis.branch, analysis.x)
    resampled = samples_columns(served, analysis.resampled_branch, analysis.resampled_x) if resample else [None] * len(y)
    out = []
    for y_i, q_i, samples_i, log_w, d, e, resampled_i in zip(
        y.tolist(), q_branches(served, q), samples, analysis.log_weights, diagnostics_columns, exact_columns, resampled
    ):
        ess, ess_fraction, log_z, log_z_se, elbo, pareto_k, mean_x, std_x, verdict, reason, discrete, check = d
        result = {
            "model": served.model.name, "seed": seed, "y": y_i, "objective": objective, "q": q_i,
            "samples": samples_i, "log_weights": finite_array(log_w),
            "diagnostics": {
                "num_samples": num_samples, "ess": ess, "ess_fraction": ess_fraction, "log_evidence": log_z,
                "log_evidence_se": log_z_se, "elbo": elbo, "pareto_k": pareto_k, "verdict": verdict, "reason": reason,
                "posterior_mean_x": mean_x, "posterior_std_x": std_x, "discrete_probabilities": discrete, "cross_check": check,
            },
            "exact": {
                "log_evidence": e[0], "posterior_mean_x": e[1], "posterior_std_x": e[2], "kl_pq": e[3], "kl_qp": e[4],
                "discrete_probabilities": e[5],
            },
        }
        if resample:
            result["resampled"] = resampled_i
        out.append(result)
    return out


def answer(
    served: ServedModel, y: list[float], objective: str, num_samples: int, seed: int, resample: bool, cross_check: bool
) -> list[dict[str, Any]]:
    """Per observation: one network's result, or {"objectives": {...}} for "both"."""
    objectives = ["pq", "qp"] if objective == "both" else [objective]
    y_tensor = torch.tensor(y, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    needed = set(objectives) | ({OTHER[o] for o in objectives} & set(served.artifacts) if cross_check else set())
    with torch.inference_mode():
        qs = {name: served.artifacts[name].network(y_tensor.float()).to(torch.float64) for name in needed}
        per_objective = {
            name: results_for(
                served, y_tensor, name, qs[name], qs.get(OTHER[name]) if cross_check else None,
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
