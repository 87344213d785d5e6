"""The Arrow layout of an answer: the JSON answer's content as an Apache Arrow IPC stream, columns over observations.

One row per observation and objective (with "both", each observation's pq row
then its qp row: the JSON's order). Every JSON object becomes a struct column
with the same field names in the same order, every per-sample list a
fixed-size list (its values one contiguous float64 or int64 buffer, read into
numpy as ``(observations, samples)`` without a copy), and every number the same
float64 the JSON prints, bit for bit (orjson writes the shortest decimal that
reads back to the same double). Where the JSON has null (a non-finite number,
a latent a sample's branch does not have) the column is null there; a branch's
``latents`` struct has every latent of the model, null where the branch has
none (the JSON leaves it out). The schema's metadata holds what the JSON holds
above the rows: ``model``, ``seed`` (the request's) and ``batch`` ("true" when
y was a list, so the JSON wraps the rows in ``results``). The README's
"Answer formats" section lists the columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from amortized.losses import OBJECTIVES, OTHER_OBJECTIVE
from amortized.summaries import INTERVALS, QUANTILES
from service.registry import ServedModel

if TYPE_CHECKING:
    from service.answers import Numbers

MEDIA_TYPE = "application/vnd.apache.arrow.stream"
VERDICTS = ("reliable", "usable", "unreliable")
# a table with fewer bytes of buffers than this is streamed in one pass (see stream)
MEASURED_BYTES = 1 << 20
# the IPC stream format's defaults, given once: without options pyarrow reads two environment variables per writer
WRITE_OPTIONS = pa.ipc.IpcWriteOptions()

CROSS_CHECK_FIELDS = (
    "log_evidence_other",
    "log_evidence_other_se",
    "log_evidence_mixture",
    "log_evidence_mixture_se",
    "missed_mass",
    "missed_mass_se",
)
CROSS_CHECK_TYPE = pa.struct(
    [pa.field("other_objective", pa.dictionary(pa.int8(), pa.string())), pa.field("num_samples", pa.int64())]
    + [pa.field(name, pa.float64()) for name in CROSS_CHECK_FIELDS]
    + [pa.field("consistent", pa.bool_()), pa.field("misses_mass", pa.bool_())]
)


def floats(values: np.ndarray) -> pa.Array:
    """float64 values as a column, null where not finite (where the JSON has null): ``(rows,)`` or ``(rows, n)``."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    flat = values.reshape(-1)
    finite = np.isfinite(flat)
    column = pa.array(flat, mask=None if finite.all() else ~finite)
    return column if values.ndim == 1 else pa.FixedSizeListArray.from_arrays(column, values.shape[1])


def integers(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    """int64 values ``(rows,)`` or ``(rows, n)``, null where ``missing``."""
    flat = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    column = pa.array(flat, mask=None if missing is None or not missing.any() else missing.reshape(-1))
    return column if np.ndim(values) == 1 else pa.FixedSizeListArray.from_arrays(column, np.shape(values)[1])


def labels(values: list[str], choices: list[str]) -> pa.Array:
    """Strings from a short list of ``choices`` (verdicts): a dictionary column, 1 byte a row."""
    index = {choice: i for i, choice in enumerate(choices)}
    codes = np.array([index[v] for v in values], dtype=np.int8)
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(choices, pa.string()))


def constant(value: str | None, rows: int, choices: list[str]) -> pa.Array:
    """One of ``choices`` (or null) on every row: a dictionary column, 1 byte a row.

    The dictionary is ``choices`` whatever the rows hold, so every objective's
    rows share it (their tables concatenate).
    """
    codes = np.full(rows, choices.index(value) if value is not None else 0, dtype=np.int8)
    mask = np.ones(rows, dtype=bool) if value is None else None
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=mask), pa.array(choices, pa.string()))


def struct(fields: dict[str, pa.Array], rows: int) -> pa.Array:
    """A struct column of ``fields`` in their order (an empty struct where a model has no discrete latents)."""
    if not fields:
        return pa.array([{}] * rows, type=pa.struct([]))
    return pa.StructArray.from_arrays(list(fields.values()), names=list(fields))


def probabilities(served: ServedModel, branch_probabilities: np.ndarray) -> pa.Array:
    """{latent: {value: P(latent = value)}} per row, as nested structs (the JSON's discrete_probabilities)."""
    marginals = np.asarray(served.model.latent_marginals(branch_probabilities), dtype=np.float64)
    rows = len(marginals)
    return struct(
        {
            name: struct({value: floats(column) for value, column in zip(values, marginals[:, columns].T)}, rows)
            for name, values, columns in served.value_groups
        },
        rows,
    )


def samples(served: ServedModel, branch: np.ndarray, x: np.ndarray) -> pa.Array:
    """{"x": [...], latent: [...]} per row: fixed-size lists over the samples."""
    columns = {"x": floats(x)}
    for name in served.branch_values:
        values, missing = served.branch_value_tables[name]
        columns[name] = integers(values[branch], missing[branch])
    return struct(columns, len(x))


def q_column(served: ServedModel, numbers: Numbers) -> pa.Array:
    """{"branches": [{latents, probability, mean, std}, ...]} per row: a fixed-size list of branch structs."""
    q = numbers.q
    rows, width = q.means.shape
    latents = {}
    for name in served.branch_values:
        values, missing = served.branch_value_tables[name]
        latents[name] = integers(np.tile(values, rows), np.tile(missing, rows))
    branches = struct(
        {
            "latents": struct(latents, rows * width),
            "probability": floats(np.asarray(q.probs).reshape(-1)),
            "mean": floats(np.asarray(q.means).reshape(-1)),
            "std": floats(np.asarray(q.stds).reshape(-1)),
        },
        rows * width,
    )
    return struct({"branches": pa.FixedSizeListArray.from_arrays(branches, width)}, rows)


def diagnostics_column(served: ServedModel, numbers: Numbers) -> pa.Array:
    analysis = numbers.analysis
    assert analysis is not None
    rows = len(analysis.x)
    check = analysis.cross_check
    if check is None:  # null rows; its dictionary child built as every other (a slice of it then copies alike)
        children = [
            constant(None, rows, list(OBJECTIVES)) if kind.name == "other_objective" else pa.nulls(rows, kind.type)
            for kind in CROSS_CHECK_TYPE
        ]
        cross_check = pa.StructArray.from_arrays(
            children, fields=list(CROSS_CHECK_TYPE), mask=pa.array(np.ones(rows, bool))
        )
    else:
        cross_check = struct(
            {
                "other_objective": constant(OTHER_OBJECTIVE[numbers.objective], rows, list(OBJECTIVES)),
                "num_samples": integers(np.full(rows, check.num_samples)),
                **{name: floats(getattr(check, name)) for name in CROSS_CHECK_FIELDS},
                "consistent": pa.array(np.asarray(check.consistent, dtype=bool)),
                "misses_mass": pa.array(np.asarray(check.misses_mass, dtype=bool)),
            },
            rows,
        )
    return struct(
        {
            "ess": floats(analysis.ess),
            "ess_fraction": floats(analysis.ess_fraction),
            "log_evidence": floats(analysis.log_evidence),
            "log_evidence_se": floats(analysis.log_evidence_se),
            "elbo": floats(analysis.elbo),
            "pareto_k": floats(analysis.pareto_k),
            "num_samples": integers(np.full(rows, analysis.x.shape[-1])),
            "verdict": labels(analysis.verdict, list(VERDICTS)),
            "reason": pa.array(analysis.reason, pa.string()),
            "posterior_mean_x": floats(analysis.mean_x),
            "posterior_std_x": floats(analysis.std_x),
            "discrete_probabilities": probabilities(served, analysis.branch_probabilities),
            "cross_check": cross_check,
        },
        rows,
    )


def summary_column(served: ServedModel, numbers: Numbers, rows: int) -> pa.Array:
    count, width = len(QUANTILES), len(INTERVALS)
    sources = {}
    for source, (quantiles, branch_probabilities) in numbers.summary.items():
        bounds = {
            str(a): floats(np.stack([quantiles[:, count + j], quantiles[:, count + width + j]], -1))
            for j, a in enumerate(INTERVALS)
        }
        sources[source] = struct(
            {
                "quantiles": struct({str(level): floats(quantiles[:, j]) for j, level in enumerate(QUANTILES)}, rows),
                "intervals": struct(bounds, rows),
                "discrete_probabilities": probabilities(served, branch_probabilities),
            },
            rows,
        )
    return struct(sources, rows)


def result_columns(
    served: ServedModel, y: np.ndarray, seeds: list[int], numbers: Numbers, parts: frozenset[str]
) -> dict[str, pa.Array]:
    """One network's rows: the JSON result's fields, in its order, as columns."""
    rows = len(y)
    columns: dict[str, pa.Array] = {
        "model": constant(served.name, rows, [served.name]),
        # every served objective, in order, null where that network took no part (the JSON lists those that did)
        "versions": struct(
            {
                name: constant(numbers.versions.get(name), rows, [served.artifacts[name].version])
                for name in sorted(served.artifacts)
            },
            rows,
        ),
        "seed": integers(np.asarray(seeds, dtype=np.int64)),
        "y": floats(y),
        "objective": constant(numbers.objective, rows, sorted(served.artifacts)),
    }
    analysis, exact = numbers.analysis, numbers.exact
    if "q" in parts:
        columns["q"] = q_column(served, numbers)
    if analysis is not None and "samples" in parts:
        columns["samples"] = samples(served, analysis.branch, analysis.x)
    if analysis is not None and "log_weights" in parts:
        columns["log_weights"] = floats(analysis.log_weights)
    if analysis is not None and "diagnostics" in parts:
        columns["diagnostics"] = diagnostics_column(served, numbers)
    if exact is not None:
        columns["exact"] = struct(
            {
                "log_evidence": floats(exact["log_evidence"]),
                "posterior_mean_x": floats(exact["mean_x"]),
                "posterior_std_x": floats(exact["std_x"]),
                "kl_pq": floats(exact["kl_pq"]),
                "kl_qp": floats(exact["kl_qp"]),
                "discrete_probabilities": probabilities(served, exact["branch_probabilities"]),
            },
            rows,
        )
    if analysis is not None and analysis.resampled_branch is not None and analysis.resampled_x is not None:
        columns["resampled"] = samples(served, analysis.resampled_branch, analysis.resampled_x)
    if numbers.summary:
        columns["summary"] = summary_column(served, numbers, rows)
    return columns


def answer_table(
    served: ServedModel, y: np.ndarray, seeds: list[int], per_objective: list[Numbers], parts: frozenset[str]
) -> pa.Table:
    """Every objective's rows, each observation's objectives together (the JSON's order)."""
    tables = [pa.table(result_columns(served, y, seeds, numbers, parts)) for numbers in per_objective]
    if len(tables) == 1:
        return tables[0]
    together = pa.concat_tables(tables)
    # row i of objective j sits at j * len(y) + i; interleaved: observation-major
    order = (np.arange(len(tables))[None, :] * len(y) + np.arange(len(y))[:, None]).reshape(-1)
    return together.take(pa.array(order))


def own_buffers(table: pa.Table) -> pa.Table:
    """A slice of a larger table (one query's rows of a micro-batch) with buffers of its own: the same values.

    pyarrow's IPC writer writes a slice's buffer whole where it fits in the
    stream's 64-byte padding (a column of a few rows: seeds, y, diagnostics,
    dictionary indices), so a query's stream carried, in that padding, the other
    queries' numbers of its micro-batch (the same values for its own rows, but
    not the bytes it gets alone). ``concat_arrays`` of a column's one chunk
    copies just its rows (about 50 us for a query of 1000 samples).
    """
    return pa.table({name: pa.concat_arrays(table.column(name).chunks) for name in table.column_names})


def stream(table: pa.Table, metadata: dict[str, str]) -> bytes:
    """The table as an Arrow IPC stream (one schema, its record batches), ``metadata`` in the schema.

    A small table (whose buffers, those of the micro-batch it is a slice of,
    hold under :data:`MEASURED_BYTES`: every single query) is written once into
    a growing buffer: writing the schema and the dictionaries is most of its
    cost, and measuring first doubled it (64 -> 39 us for one y of 1000
    samples; ``get_total_buffer_size`` is 2 us where a slice's ``nbytes`` is 19). A large one is measured first (a mock
    stream counts the bytes), then written once into a buffer of that size and
    copied once into ``bytes`` (a growing stream and its ``bytes`` took three
    copies: 16 MB in 9 ms). The answer is ``bytes``, not a view of the buffer:
    the response middleware compares a body with itself (Starlette's
    IdentityResponder: ``body != message["body"]``), which for ``bytes`` is an
    identity check and for a ``memoryview`` a comparison item by item (66 ms
    for 16 MB, more than the answer's layout and serialisation together).
    """
    table = table.replace_schema_metadata(metadata)
    if table.get_total_buffer_size() < MEASURED_BYTES:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=WRITE_OPTIONS) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()
    size = pa.MockOutputStream()
    with pa.ipc.new_stream(size, table.schema, options=WRITE_OPTIONS) as writer:
        writer.write_table(table)
    buffer = pa.allocate_buffer(size.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), table.schema, options=WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return buffer.to_pybytes()
