"""Answering: a validated posterior query (:class:`PosteriorQuery`) becomes the JSON-ready answer.

The numbers come from :func:`amortized.diagnostics.analyse` and
:func:`amortized.diagnostics.exact_summary`, vectorised over all observations
of a request in NumPy; this module only lays them out per observation. Arrays
stay NumPy (orjson writes them directly), and orjson writes every NaN or
infinity as null, so a 200 response never carries NaN.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from amortized.diagnostics import DEFAULT_CHECK_SAMPLES, analyse, exact_summary
from amortized.distributions import BranchedNormal
from amortized.importance.streams import generator_for, row_seeds
from amortized.losses import OTHER_OBJECTIVE
from service.registry import ServedModel
from service.schemas import requested_objectives


def samples_columns(served: ServedModel, branch: np.ndarray, x: np.ndarray) -> list[dict[str, Any]]:
    """Per observation: {"x": [...], latent: [...]} with None where a latent does not exist in a sample.

    A latent that exists in every branch is an int array (orjson writes it
    directly); one that may be absent is looked up in an object table of
    Python ints and None.
    """
    columns: dict[str, list] = {"x": list(x)}
    for name, values in served.branch_values.items():
        columns[name] = list(np.take(values, branch)) if values.dtype != object else np.take(values, branch).tolist()
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def probabilities(served: ServedModel, branch_probabilities: np.ndarray) -> list[dict[str, dict[str, float]]]:
    """Per observation: {latent: {value: P(latent = value)}}, all values at once."""
    rows = served.model.latent_marginals(branch_probabilities).tolist()
    return [{name: dict(zip(values, row[columns])) for name, values, columns in served.value_groups} for row in rows]


def q_branches(served: ServedModel, q: BranchedNormal) -> list[dict[str, Any]]:
    return [
        {
            "branches": [
                {"latents": latents, "probability": p, "mean": m, "std": s}
                for latents, p, m, s in zip(served.branch_latents, *row)
            ]
        }
        for row in zip(q.probs.tolist(), q.means.tolist(), q.stds.tolist())
    ]


@dataclass(frozen=True)
class PosteriorQuery:
    """One validated posterior request."""

    served: ServedModel
    y: list[float]
    objective: str
    num_samples: int
    seed: int
    resample: bool
    cross_check: bool
    check_samples: int = DEFAULT_CHECK_SAMPLES
    batch: bool = True  # y came as a list: each row gets a seed of its own, derived from ``seed``

    @property
    def batch_key(self) -> Hashable:
        """Queries with the same key can share one vectorised call (networks run on them stacked)."""
        return (
            id(self.served),
            len(self.y),
            self.objective,
            self.num_samples,
            self.resample,
            self.cross_check,
            self.check_samples,
        )

    @property
    def row_seeds(self) -> list[int]:
        """The seed of each observation: the request's for a scalar y, else :func:`row_seeds` of it."""
        return row_seeds(self.seed, len(self.y)) if self.batch else [self.seed]

    @property
    def size(self) -> int:
        """Draws the query makes (observations x draws per observation): what it costs.

        Per objective: q's num_samples, and with the cross-check max(num_samples,
        check_samples) of each network, q's own draws serving it from
        check_samples on; resampling draws num_samples more uniforms.
        """
        n, m = self.num_samples, self.check_samples
        per_objective = n * (2 if self.resample else 1)
        if self.cross_check:
            per_objective += n if n >= m else 2 * m
        return len(self.y) * len(requested_objectives(self.objective)) * per_objective


def per_row(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Named columns ``(observations,)`` as one dict per observation, in the columns' order (Python scalars)."""
    names, values = list(columns), [np.asarray(column).tolist() for column in columns.values()]
    return [dict(zip(names, row)) for row in zip(*values)]


def results_for(
    served: ServedModel,
    y: np.ndarray,
    seeds: list[int],
    objective: str,
    q: BranchedNormal,
    other: BranchedNormal | None,
    truth: tuple[BranchedNormal, np.ndarray],
    num_samples: int,
    resample: bool,
    check_samples: int,
    unchecked: str,
) -> list[dict[str, Any]]:
    """The answer of one compiled network for every observation in ``y`` (``truth``: exact posterior and evidence).

    Each observation draws from a generator of its own, seeded by its entry in ``seeds``.
    """
    analysis = analyse(
        served.model,
        y,
        q,
        num_samples,
        generator_for(seeds),
        other=other,
        resample=resample,
        check_samples=check_samples,
        unchecked=unchecked,
    )
    exact = exact_summary(served.model, truth, q)
    check = analysis.cross_check
    # variants: the version of every network that produced this answer (this one, and the cross-check's)
    versions = {
        name: served.artifacts[name].version
        for name in ([objective] + ([OTHER_OBJECTIVE[objective]] if other is not None else []))
    }
    estimates = per_row(
        {
            "ess": analysis.ess,
            "ess_fraction": analysis.ess_fraction,
            "log_evidence": analysis.log_evidence,
            "log_evidence_se": analysis.log_evidence_se,
            "elbo": analysis.elbo,
            "pareto_k": analysis.pareto_k,
        }
    )
    moments = per_row({"posterior_mean_x": analysis.mean_x, "posterior_std_x": analysis.std_x})
    exact_rows = per_row(
        {
            "log_evidence": exact["log_evidence"],
            "posterior_mean_x": exact["mean_x"],
            "posterior_std_x": exact["std_x"],
            "kl_pq": exact["kl_pq"],
            "kl_qp": exact["kl_qp"],
        }
    )
    checks = (
        None
        if check is None
        else per_row(
            {
                "log_evidence_other": check.log_evidence_other,
                "log_evidence_other_se": check.log_evidence_other_se,
                "log_evidence_mixture": check.log_evidence_mixture,
                "log_evidence_mixture_se": check.log_evidence_mixture_se,
                "missed_mass": check.missed_mass,
                "missed_mass_se": check.missed_mass_se,
                "consistent": check.consistent,
                "misses_mass": check.misses_mass,
            }
        )
    )
    samples = samples_columns(served, analysis.branch, analysis.x)
    resampled = None
    if analysis.resampled_branch is not None and analysis.resampled_x is not None:
        resampled = samples_columns(served, analysis.resampled_branch, analysis.resampled_x)
    estimated = probabilities(served, analysis.branch_probabilities)
    exact_probabilities = probabilities(served, exact["branch_probabilities"])
    out = []
    for i, (y_i, seed, q_i) in enumerate(zip(y.tolist(), seeds, q_branches(served, q))):
        diagnostics = {
            **estimates[i],
            "num_samples": num_samples,
            "verdict": analysis.verdict[i],
            "reason": analysis.reason[i],
            **moments[i],
            "discrete_probabilities": estimated[i],
            "cross_check": None,
        }
        if check is not None and checks is not None:
            diagnostics["cross_check"] = {
                "other_objective": OTHER_OBJECTIVE[objective],
                "num_samples": check.num_samples,
                **checks[i],
            }
        result = {
            "model": served.name,
            "versions": versions,
            "seed": seed,
            "y": y_i,
            "objective": objective,
            "q": q_i,
            "samples": samples[i],
            "log_weights": analysis.log_weights[i],
            "diagnostics": diagnostics,
            "exact": {**exact_rows[i], "discrete_probabilities": exact_probabilities[i]},
        }
        if resampled is not None:
            result["resampled"] = resampled[i]
        out.append(result)
    return out


def answer_batch(queries: list[PosteriorQuery]) -> list[list[dict[str, Any]]]:
    """Per query, per observation: one network's result, or {"objectives": {...}} for "both".

    The queries share a batch key (model, number of observations, objective,
    samples, flags); their observations are answered as one batch. Each
    observation's own generator (seeded by its row seed) draws its noise, and
    every step computes a row independently of the others, so a row's answer
    depends on its seed alone, not on what else is in the batch (a test holds
    this to the byte). With "both", each network's half draws from a fresh
    generator of the same row seed, so each half is the answer its objective
    gives alone with that seed.
    """
    first = queries[0]
    served, objective, cross_check = first.served, first.objective, first.cross_check
    objectives = requested_objectives(objective)
    # (queries, observations): same length by the key
    stacked = np.array([query.y for query in queries], dtype=np.float64)
    y, count = stacked.reshape(-1), stacked.shape[1]
    seeds = [seed for query in queries for seed in query.row_seeds]
    needed = set(objectives) | (
        {OTHER_OBJECTIVE[o] for o in objectives} & set(served.artifacts) if cross_check else set()
    )
    # each observation a stack item of its own: its network output is one BLAS call whatever else is asked (numpy_mlp)
    qs = {name: q.flatten() for name, q in served.forward(sorted(needed), y[:, None]).items()}
    truth = served.model.exact_posterior_and_evidence(y)  # shared by both objectives
    per_objective = {
        name: results_for(
            served,
            y,
            seeds,
            name,
            qs[name],
            qs.get(OTHER_OBJECTIVE[name]) if cross_check else None,
            truth,
            first.num_samples,
            first.resample,
            first.check_samples,
            "cross_check was false"
            if not cross_check
            else f"{OTHER_OBJECTIVE[name]} is not compiled for {served.model.name}",
        )
        for name in objectives
    }
    if objective == "both":
        per_observation = [
            {"model": served.name, "seed": seed, "y": y_i, "objectives": dict(zip(objectives, row))}
            for y_i, seed, *row in zip(y.tolist(), seeds, *per_objective.values())
        ]
    else:
        per_observation = per_objective[objectives[0]]
    return [per_observation[start : start + count] for start in range(0, len(per_observation), count)]


def answer(query: PosteriorQuery) -> list[dict[str, Any]]:
    """One query's answer, per observation."""
    return answer_batch([query])[0]
