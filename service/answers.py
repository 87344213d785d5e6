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
from service.batching import GroupedGenerator, Query, generator_for
from service.registry import ServedModel

OTHER = {"pq": "qp", "qp": "pq"}


def samples_columns(served: ServedModel, branch: np.ndarray, x: np.ndarray) -> list[dict[str, Any]]:
    """Per observation: {"x": [...], latent: [...]} with None where a latent does not exist in a sample.

    A latent that exists in every branch is an int array (orjson writes it
    directly); one that may be absent is looked up in an object table of
    Python ints and None.
    """
    columns: dict[str, list] = {"x": list(x)}
    for name, values in served.latent_values.items():
        columns[name] = list(np.take(values, branch)) if values.dtype != object else np.take(values, branch).tolist()
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def probabilities(served: ServedModel, branch_probabilities: np.ndarray) -> list[dict[str, dict[str, float]]]:
    """Per observation: {latent: {value: P(latent = value)}}, all values at once."""
    rows = (branch_probabilities[:, :, None] * served.value_matrix).sum(1).tolist()  # per row, not BLAS (see branch_probabilities)
    return [{name: dict(zip(values, row[columns])) for name, values, columns in served.value_groups} for row in rows]


def q_branches(served: ServedModel, q: BranchedNormal) -> list[dict[str, Any]]:
    return [
        {"branches": [{"latents": latents, "probability": p, "mean": m, "std": s} for latents, p, m, s in zip(served.branch_latents, *row)]}
        for row in zip(q.probs.tolist(), q.means.tolist(), q.stds.tolist())
    ]


DIAGNOSTIC_FIELDS = ("ess", "ess_fraction", "log_evidence", "log_evidence_se", "elbo", "pareto_k")  # then mean_x, std_x
CHECK_FIELDS = ("log_evidence_other", "log_evidence_other_se", "log_evidence_mixture", "log_evidence_mixture_se")


def results_for(
    served: ServedModel, y: np.ndarray, seeds: list[int], objective: str, q: BranchedNormal, other: BranchedNormal | None,
    truth: tuple[BranchedNormal, np.ndarray], num_samples: int, resample: bool, generator: np.random.Generator | GroupedGenerator,
) -> list[dict[str, Any]]:
    """The answer of one compiled network for every observation in ``y`` (``truth``: exact posterior and evidence)."""
    analysis = analyse(served.model, y, q, num_samples, generator, other=other, resample=resample)
    exact = exact_summary(served.model, truth, q)
    check = analysis.cross_check
    # variants: the version of every network that produced this answer (this one, and the cross-check's)
    versions = {name: served.artifacts[name].version for name in ([objective] + ([OTHER[objective]] if other is not None else []))}
    scalars = [getattr(analysis, name) for name in DIAGNOSTIC_FIELDS] + [analysis.mean_x, analysis.std_x]
    scalars += [exact[name] for name in ("log_evidence", "mean_x", "std_x", "kl_pq", "kl_qp")]
    if check is not None:
        scalars += [getattr(check, name) for name in CHECK_FIELDS]
    rows = np.array(scalars).T.tolist()  # (observations, fields)
    flags = np.array([check.consistent, check.misses_mass]).T.tolist() if check is not None else None
    samples = samples_columns(served, analysis.branch, analysis.x)
    resampled = samples_columns(served, analysis.resampled_branch, analysis.resampled_x) if resample else None
    estimated, truth = probabilities(served, analysis.branch_probabilities), probabilities(served, exact["branch_probabilities"])
    out = []
    for i, (y_i, seed, q_i, row) in enumerate(zip(y.tolist(), seeds, q_branches(served, q), rows)):
        ess, ess_fraction, log_evidence, log_evidence_se, elbo, pareto_k, mean_x, std_x = row[:8]
        diagnostics = {
            "ess": ess, "ess_fraction": ess_fraction, "log_evidence": log_evidence, "log_evidence_se": log_evidence_se,
            "elbo": elbo, "pareto_k": pareto_k, "num_samples": num_samples, "verdict": analysis.verdict[i],
            "reason": analysis.reason[i], "posterior_mean_x": mean_x, "posterior_std_x": std_x,
            "discrete_probabilities": estimated[i], "cross_check": None,
        }
        if check is not None:
            other_z, other_se, mixture_z, mixture_se = row[13:]
            diagnostics["cross_check"] = {
                "other_objective": OTHER[objective], "log_evidence_other": other_z, "log_evidence_other_se": other_se,
                "log_evidence_mixture": mixture_z, "log_evidence_mixture_se": mixture_se,
                "consistent": flags[i][0], "misses_mass": flags[i][1],
            }
        exact_z, exact_mean, exact_std, kl_pq, kl_qp = row[8:13]
        result = {
            "model": served.name, "versions": versions, "seed": seed, "y": y_i, "objective": objective, "q": q_i,
            "samples": samples[i], "log_weights": analysis.log_weights[i], "diagnostics": diagnostics,
            "exact": {
                "log_evidence": exact_z, "posterior_mean_x": exact_mean, "posterior_std_x": exact_std,
                "kl_pq": kl_pq, "kl_qp": kl_qp, "discrete_probabilities": truth[i],
            },
        }
        if resample:
            result["resampled"] = resampled[i]
        out.append(result)
    return out


def answer_batch(queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Per query, per observation: one network's result, or {"objectives": {...}} for "both".

    The queries share a batch key (model, number of observations, objective,
    samples, flags); their observations are answered as one batch. Each
    query's own generator draws its noise and every step computes a row
    independently of the others, so a query's answer does not depend on what
    else is in the batch (a test holds this to the byte).
    """
    first = queries[0]
    served, objective, cross_check = first.served, first.objective, first.cross_check
    objectives = ["pq", "qp"] if objective == "both" else [objective]
    stacked = np.array([query.y for query in queries], dtype=np.float64)  # (queries, observations): same length by the key
    y, count = stacked.reshape(-1), stacked.shape[1]
    seeds = [query.seed for query in queries for _ in range(count)]
    generator = generator_for([query.seed for query in queries], [count] * len(queries))
    needed = set(objectives) | ({OTHER[o] for o in objectives} & set(served.artifacts) if cross_check else set())
    qs = {name: q.flatten() for name, q in served.forward(needed, stacked).items()}  # each query as if alone (numpy_mlp)
    truth = served.model.exact_posterior_and_evidence(y)  # shared by both objectives
    per_objective = {
        name: results_for(
            served, y, seeds, name, qs[name], qs.get(OTHER[name]) if cross_check else None, truth,
            first.num_samples, first.resample, generator,
        )
        for name in objectives
    }
    if objective == "both":
        per_observation = [
            {"model": served.name, "seed": seed, "y": y_i, "objectives": dict(zip(objectives, row))}
            for y_i, seed, *row in zip(y.tolist(), seeds, *per_objective.values())
        ]
    else:
        per_observation = per_objective[objective]
    return [per_observation[start : start + count] for start in range(0, len(per_observation), count)]


def answer(query: Query) -> list[dict[str, Any]]:
    """One query's answer, per observation."""
    return answer_batch([query])[0]

