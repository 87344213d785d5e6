"""Answering: a validated posterior query (:class:`PosteriorQuery`) becomes the JSON-ready answer.

The numbers come from :func:`amortized.diagnostics.analyse` and
:func:`amortized.diagnostics.exact_summary`, vectorised over all observations
of a request in NumPy; this module only lays them out per observation. Arrays
stay NumPy (orjson writes them directly), and orjson writes every NaN or
infinity as null, so a 200 response never carries NaN. The rows are for orjson
only: a latent that may be absent from a draw is its JSON text already, an
``orjson.Fragment`` (:func:`samples_columns`), which the ``json`` module,
``copy`` and ``pickle`` cannot handle.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from amortized.compiled import compiled
from amortized.diagnostics import DEFAULT_CHECK_SAMPLES, PosteriorAnalysis, analyse, exact_summary
from amortized.distributions import BranchedNormal
from amortized.importance.streams import generator_for, row_seeds
from amortized.losses import OTHER_OBJECTIVE
from amortized.summaries import INTERVALS, QUANTILES, SUMMARY_LEVELS, mixture_quantiles, weighted_quantiles
from service import arrow
from service.registry import ServedModel
from service.schemas import DRAWN_PARTS, requested_objectives, resolve_parts


def samples_columns(served: ServedModel, branch: np.ndarray, x: np.ndarray) -> list[dict[str, Any]]:
    """Per observation: {"x": [...], latent: [...]} with null where a latent does not exist in a sample.

    A latent that exists in every branch is an int array (orjson writes it
    directly); one that may be absent is its JSON text, written by
    :func:`json_lists` and handed to orjson as a ``Fragment`` (a list of
    Python ints and None cost about 5 us per thousand draws to build).
    """
    columns: dict[str, list] = {"x": list(x)}
    for name, values in served.branch_values.items():
        if name in served.branch_texts:
            text, ends = json_lists(branch, *served.branch_texts[name])
            columns[name] = [orjson.Fragment(row[:end].tobytes()) for row, end in zip(text, ends)]
        else:
            columns[name] = list(np.take(values, branch))
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


@compiled
def json_lists(branch: np.ndarray, texts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``branch`` ``(rows, n)``, the JSON list of each draw's branch text: ``[0,null,1]``.

    ``texts`` ``(branches, width)`` holds each branch's text (uint8, padded)
    and ``lengths`` its length. Returns the rows' bytes ``(rows, room)``
    uint8 and where each row ends.

    Each branch's comma and text are packed into 64-bit words once; a row's
    bytes gather in one pending word, stored whole each time it fills (aligned
    8-byte stores: about 2.5 times faster than a byte at a time).
    """
    rows, n = branch.shape
    branches, width = texts.shape
    chunks = (width + 8) // 8  # 8-byte words of a comma and the text
    words, sizes = np.zeros((branches, chunks), np.uint64), np.zeros((branches, chunks), np.int64)
    for b in range(branches):
        for i in range(1 + lengths[b]):
            byte = np.uint64(44) if i == 0 else np.uint64(texts[b, i - 1])  # 44: a comma
            words[b, i // 8] |= byte << np.uint64(8 * (i % 8))
            sizes[b, i // 8] += 1
    out = np.zeros((rows, (2 + n * (width + 1)) // 8 + 2), np.uint64)
    ends = np.empty(rows, np.int64)
    for r in range(rows):
        pending, filled, stored = np.uint64(0), 0, 0  # filled: bytes in pending (0 to 7 between words)
        for j in range(n):
            b = branch[r, j]
            for c in range(chunks):
                word, size = words[b, c], sizes[b, c]
                if size == 0:
                    break
                pending |= word << np.uint64(8 * filled)
                filled += size
                if filled >= 8:
                    out[r, stored] = pending
                    stored += 1
                    filled -= 8
                    pending = word >> np.uint64(8 * (size - filled)) if filled else np.uint64(0)
        out[r, stored] = pending
        ends[r] = 8 * stored + filled if n else 1
    raw = out.view(np.uint8)  # little-endian: a word's first byte is its lowest
    for r in range(rows):
        raw[r, 0] = 91  # [ in place of the first comma
        raw[r, ends[r]] = 93  # ]
        ends[r] += 1
    return raw, ends


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


# what a row without draws (networks, exact posterior, its quantiles, the row's seed, the layout) costs, in draws:
# about 50 us against 0.15 us a draw in a 1000 x 1000 request (bench/answer_formats.py); so a summaries-only request
# of 500 rows or more runs off the event loop (AMORTIZED_OFFLOAD_SAMPLES) like one of as many draws
UNDRAWN_ROW_COST = 100
# the parts that need the cross-check: the diagnostics report it, and the resampling uniforms follow its draws in each
# row's stream (so that resampled draws are the same whatever else include asks)
CHECKED_PARTS = frozenset({"diagnostics", "resampled"})
# A big request's observations are answered in blocks of about this many draws per objective: every array of a
# block stays in a core's cache between passes (a 1000 x 1000 request takes about a third less CPU than in one
# piece: bench/answer_formats.py), and blocks run on AMORTIZED_COMPUTE_THREADS threads. Rows are computed
# independently of each other (amortized.importance.streams), so the bytes are those of one piece.
BLOCK_DRAWS = 125_000


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
    # what the answer holds (service.schemas.resolve_parts); empty: the default answer (resampled if resample)
    parts: frozenset[str] = frozenset()
    media: str = "json"  # the layout: "json" rows, or "arrow" (an Arrow record batch, service.arrow)
    compute_threads: int = 1  # threads that answer a big query's blocks of rows (AMORTIZED_COMPUTE_THREADS)

    def __post_init__(self) -> None:
        if not self.parts:
            object.__setattr__(self, "parts", resolve_parts(None, self.num_samples, self.resample))
        if not self.parts & CHECKED_PARTS:  # nothing uses the cross-check: it draws nothing and counts for nothing
            object.__setattr__(self, "cross_check", False)

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
            self.parts,
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
        check_samples on; resampling draws num_samples more uniforms. A query
        that asks for no part made of draws (only q, exact and the summaries of
        q and the exact posterior) draws nothing, and counts UNDRAWN_ROW_COST per
        observation and objective.
        """
        return len(self.y) * len(requested_objectives(self.objective)) * self.row_size

    @property
    def row_size(self) -> int:
        """Draws one observation makes for one objective (:attr:`size`'s share of a row)."""
        n, m = self.num_samples, self.check_samples
        if not self.parts & DRAWN_PARTS:
            return UNDRAWN_ROW_COST
        per_objective = n * (2 if self.resample and "resampled" in self.parts else 1)
        if self.cross_check:
            per_objective += n if n >= m else 2 * m
        return per_objective


def per_row(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Named columns ``(observations,)`` as one dict per observation, in the columns' order (Python scalars)."""
    names, values = list(columns), [np.asarray(column).tolist() for column in columns.values()]
    return [dict(zip(names, row)) for row in zip(*values)]


@dataclass(frozen=True)
class Numbers:
    """One compiled network's numbers for every observation of a batch, before any layout (JSON rows or Arrow).

    ``analysis`` is None when the query asks for no part that needs draws;
    ``exact`` (:func:`exact_summary`) when it leaves out "exact"; ``summary``
    holds, per requested source ("q", "weighted", "exact"), the quantiles at
    :data:`SUMMARY_LEVELS` ``(observations, levels)`` and the branch
    probabilities ``(observations, branches)``.
    """

    objective: str
    versions: dict[str, str]
    q: BranchedNormal
    analysis: PosteriorAnalysis | None
    exact: dict[str, np.ndarray] | None
    summary: dict[str, tuple[np.ndarray, np.ndarray]]


def row_blocks(rows: int, row_size: int, threads: int = 1) -> list[slice]:
    """``rows`` observations in consecutive blocks of about :data:`BLOCK_DRAWS` draws at most (one if that is all).

    With several blocks, their count is a multiple of ``threads`` (where there
    are rows enough), so that every thread answers as many: 17 blocks on 2
    threads kept one thread busy a block longer than the other.
    """
    per_block = max(1, BLOCK_DRAWS // max(row_size, 1))
    count = -(-rows // per_block)
    if count > 1:
        count = min(rows, -(-count // threads) * threads)
    edges = [rows * i // count for i in range(count + 1)]  # as even as they come: no short last block
    return [slice(start, stop) for start, stop in zip(edges[:-1], edges[1:])]


@functools.lru_cache(maxsize=4)
def compute_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that answer blocks of rows (one pool per size, made on first use in each worker process).

    The compiled loops release the GIL (``nogil``), and so do NumPy's ufuncs and
    random generators on whole arrays: blocks run in parallel.
    """
    return ThreadPoolExecutor(threads, thread_name_prefix="amortized-compute")


def join_blocks(parts: list[Any]) -> Any:
    """What blocks of rows answered, joined along the rows: arrays concatenated, lists chained.

    Dicts, tuples and dataclasses (:class:`Numbers`, ``PosteriorAnalysis``,
    ``BranchedNormal``) field by field; anything else (None, a count, a name)
    is the same in every block, and is the first block's.
    """
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if isinstance(first, tuple):
        return tuple(join_blocks(list(fields)) for fields in zip(*parts))
    if isinstance(first, dict):
        return {key: join_blocks([part[key] for part in parts]) for key in first}
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return type(first)(
            **{f.name: join_blocks([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)}
        )
    return first


def numbers_for(
    served: ServedModel,
    y: np.ndarray,
    seeds: list[int],
    objective: str,
    q: BranchedNormal,
    other: BranchedNormal | None,
    truth: tuple[BranchedNormal, np.ndarray],
    exact_quantiles: np.ndarray | None,
    first: PosteriorQuery,
    unchecked: str,
    rows: slice | None = None,
) -> Numbers:
    """What one compiled network answers for every observation in ``y`` (``truth``: exact posterior and evidence).

    Each observation draws from a generator of its own, seeded by its entry in
    ``seeds``; the draws are the same whatever parts are asked (resampling, the
    last to draw, is skipped when "resampled" is not). A big batch is answered
    in blocks of rows (:func:`row_blocks`; ``rows``: one block), on
    ``first.compute_threads`` threads, and joined: every row is computed
    independently of the others, so the numbers are those of one piece, to the bit.
    """
    if rows is None:
        blocks = row_blocks(len(y), first.row_size, first.compute_threads)
        if len(blocks) > 1:
            arguments = (served, y, seeds, objective, q, other, truth, exact_quantiles, first, unchecked)
            block = functools.partial(numbers_for, *arguments)
            if first.compute_threads > 1:
                return join_blocks(list(compute_pool(first.compute_threads).map(block, blocks)))
            return join_blocks([block(rows) for rows in blocks])
    else:  # one block of a big batch
        y, seeds, q, truth = y[rows], seeds[rows], q[rows], (truth[0][rows], truth[1][rows])
        other = None if other is None else other[rows]
        exact_quantiles = None if exact_quantiles is None else exact_quantiles[rows]
    parts = first.parts
    analysis = None
    if parts & DRAWN_PARTS:
        analysis = analyse(
            served.model,
            y,
            q,
            first.num_samples,
            generator_for(seeds),
            other=other,
            resample=first.resample and "resampled" in parts,
            check_samples=first.check_samples,
            unchecked=unchecked,
        )
    summary: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "summary.q" in parts:
        summary["q"] = (mixture_quantiles(q, SUMMARY_LEVELS), q.probs)
    if "summary.weighted" in parts and analysis is not None:
        summary["weighted"] = (
            weighted_quantiles(analysis.x, analysis.log_weights, SUMMARY_LEVELS),
            analysis.branch_probabilities,
        )
    if "summary.exact" in parts and exact_quantiles is not None:
        summary["exact"] = (exact_quantiles, served.model.branch_probabilities(truth[0]))
    # versions: the version of every network that produced this answer (this one, and the cross-check's)
    versions = {
        name: served.artifacts[name].version
        for name in ([objective] + ([OTHER_OBJECTIVE[objective]] if other is not None else []))
    }
    exact = exact_summary(served.model, truth, q) if "exact" in parts else None
    return Numbers(objective, versions, q, analysis, exact, summary)


def summary_rows(served: ServedModel, summary: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Per observation: {source: {"quantiles": {level: x}, "intervals": {level: [low, high]}, discrete_probabilities}}.

    Levels are keyed by their shortest decimal form ("0.05"); the intervals are
    central: [quantile((1 - a)/2), quantile((1 + a)/2)].
    """
    names = [str(level) for level in QUANTILES]
    count, intervals = len(QUANTILES), [str(level) for level in INTERVALS]
    per_source = {}
    for source, (quantiles, branch_probabilities) in summary.items():
        rows = quantiles.tolist()
        lows, highs = count, count + len(INTERVALS)
        per_source[source] = [
            {
                "quantiles": dict(zip(names, row[:count])),
                "intervals": {a: [low, high] for a, low, high in zip(intervals, row[lows:highs], row[highs:])},
                "discrete_probabilities": probabilities_i,
            }
            for row, probabilities_i in zip(rows, probabilities(served, branch_probabilities))
        ]
    return [dict(zip(per_source, row)) for row in zip(*per_source.values())]


def json_results(served: ServedModel, y: np.ndarray, seeds: list[int], numbers: Numbers, parts: frozenset[str]):
    """The JSON layout: one dict per observation, holding the parts asked for (orjson writes the arrays)."""
    objective, analysis, exact = numbers.objective, numbers.analysis, numbers.exact
    q_rows = q_branches(served, numbers.q) if "q" in parts else None
    samples = resampled = estimates = moments = estimated = checks = None
    check = None
    if analysis is not None:
        check = analysis.cross_check
        if "samples" in parts:
            samples = samples_columns(served, analysis.branch, analysis.x)
        if analysis.resampled_branch is not None and analysis.resampled_x is not None:
            resampled = samples_columns(served, analysis.resampled_branch, analysis.resampled_x)
        if "diagnostics" in parts:
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
            estimated = probabilities(served, analysis.branch_probabilities)
            if check is not None:
                checks = per_row(
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
    exact_rows = exact_probabilities = None
    if exact is not None:
        exact_rows = per_row(
            {
                "log_evidence": exact["log_evidence"],
                "posterior_mean_x": exact["mean_x"],
                "posterior_std_x": exact["std_x"],
                "kl_pq": exact["kl_pq"],
                "kl_qp": exact["kl_qp"],
            }
        )
        exact_probabilities = probabilities(served, exact["branch_probabilities"])
    summaries = summary_rows(served, numbers.summary) if numbers.summary else None
    out = []
    for i, (y_i, seed) in enumerate(zip(y.tolist(), seeds)):
        result: dict[str, Any] = {
            "model": served.name,
            "versions": numbers.versions,
            "seed": seed,
            "y": y_i,
            "objective": objective,
        }
        if q_rows is not None:
            result["q"] = q_rows[i]
        if samples is not None:
            result["samples"] = samples[i]
        if analysis is not None and "log_weights" in parts:
            result["log_weights"] = analysis.log_weights[i]
        if analysis is not None and estimates is not None and moments is not None and estimated is not None:
            diagnostics = {
                **estimates[i],
                "num_samples": analysis.x.shape[-1],
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
            result["diagnostics"] = diagnostics
        if exact_rows is not None and exact_probabilities is not None:
            result["exact"] = {**exact_rows[i], "discrete_probabilities": exact_probabilities[i]}
        if resampled is not None:
            result["resampled"] = resampled[i]
        if summaries is not None:
            result["summary"] = summaries[i]
        out.append(result)
    return out


def answer_batch(queries: list[PosteriorQuery]) -> list[Any]:
    """Per query, its answer laid out for its media type: JSON rows, or an Arrow record batch.

    JSON: per observation, one network's result, or {"objectives": {...}} for
    "both". Arrow (:mod:`service.arrow`): one row per observation and
    objective, in the same order.

    The queries share a batch key (model, number of observations, objective,
    samples, flags, parts); their observations are answered as one batch. Each
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
    # every row of the networks' layers is computed alone (numpy_mlp: one summation order per row, no BLAS)
    qs = {name: q.flatten() for name, q in served.forward(sorted(needed), y[:, None]).items()}
    truth = served.model.exact_posterior_and_evidence(y)  # shared by both objectives
    exact_quantiles = mixture_quantiles(truth[0], SUMMARY_LEVELS) if "summary.exact" in first.parts else None
    per_objective = {
        name: numbers_for(
            served,
            y,
            seeds,
            name,
            qs[name],
            qs.get(OTHER_OBJECTIVE[name]) if cross_check else None,
            truth,
            exact_quantiles,
            first,
            "cross_check was false"
            if not cross_check
            else f"{OTHER_OBJECTIVE[name]} is not compiled for {served.name}",
        )
        for name in objectives
    }
    out: list[Any] = [None] * len(queries)
    wanted_json = [i for i, query in enumerate(queries) if query.media == "json"]
    if len(wanted_json) < len(queries):
        table = arrow.answer_table(served, y, seeds, list(per_objective.values()), first.parts)
        width = len(objectives)
        for i, query in enumerate(queries):
            if query.media != "json":  # a query's rows of a micro-batch: the bytes it gets alone (arrow.own_buffers)
                rows = table.slice(i * count * width, count * width)
                out[i] = arrow.own_buffers(rows) if len(queries) > 1 else rows
    if wanted_json:
        results = {
            name: json_results(served, y, seeds, numbers, first.parts) for name, numbers in per_objective.items()
        }
        if objective == "both":
            per_observation = [
                {"model": served.name, "seed": seed, "y": y_i, "objectives": dict(zip(objectives, row))}
                for y_i, seed, *row in zip(y.tolist(), seeds, *results.values())
            ]
        else:
            per_observation = results[objectives[0]]
        for i in wanted_json:
            out[i] = per_observation[i * count : (i + 1) * count]
    return out


def answer(query: PosteriorQuery) -> Any:
    """One query's answer: per observation (JSON rows), or its Arrow record batch."""
    return answer_batch([query])[0]
