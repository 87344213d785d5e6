"""A small Python client for the service, returning numpy arrays; installable alone (``pip install ./client``).

from client import AmortizedClient
with AmortizedClient("http://127.0.0.1:8000") as api:
    answer = api.posterior("gmm", 0.0, objective="qp", num_samples=1000, seed=7)
    answer.x, answer.latents["z"], answer.log_weights, answer.diagnostics["verdict"]
    batch = api.posterior_arrays("gmm", list_of_y, num_samples=1000)  # every observation's arrays at once
    batch.x  # (observations, samples)

Answers come as an Arrow IPC stream (``Accept: application/vnd.apache.arrow.stream``)
when pyarrow is installed, else as JSON; a server that answers 406 to Arrow
is asked again in JSON, and one that answers JSON anyway is read as such (both
from then on in JSON). Both carry the same numbers, read into the same arrays
(same dtypes, floats to the bit). A 2xx answer that is neither, or not the
answer to the request (a proxy's or captive portal's page, a corrupt body,
another model's, objectives or observations), raises :class:`InvalidAnswer`;
one that does not arrive whole, httpx's own errors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import httpx
import numpy as np

try:
    import pyarrow as pa
except ImportError:  # the client works without it, in JSON
    pa = None

ARROW = "application/vnd.apache.arrow.stream"
# an Arrow answer announcing at most this many bytes is read into a buffer of that size reserved ahead
# (read_into_buffer); a 1000 x 1000 answer is 16 MB, the largest the server's default limits allow a few hundred
MAX_PREALLOCATED_BYTES = 1 << 30


class ApiError(Exception):
    """A 3xx/4xx/5xx answer: ``status`` and the server's ``detail`` list (where and why; else its text).

    ``retry_after``: the seconds its ``Retry-After`` says to wait (a 503 ``busy``, a 429 of a full job queue, a 503
    of a job queue out of reach), or None without one (or with the HTTP-date form, which the service never sends).
    """

    def __init__(self, status: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class InvalidAnswer(ValueError):
    """A 2xx answer that is not the service's: another media type, or a body that does not read as the one it names.

    ``status`` and ``content_type`` are the response's; ``reason`` says what
    was wrong, with the body's first bytes where they help (a proxy's page).
    A ValueError, as the parsers' own errors it replaces.
    """

    def __init__(self, status: int, content_type: str, reason: str) -> None:
        super().__init__(f"HTTP {status} answer ({content_type or 'no Content-Type'}) is not the service's: {reason}")
        self.status, self.content_type, self.reason = status, content_type, reason


SHOWN_BYTES = 120  # of a body that is not an answer, quoted in InvalidAnswer
# what reading a body that is not the answer raises: a field missing or of another type (KeyError, TypeError...),
# a number no float holds (OverflowError), JSON nested past Python's recursion limit (RecursionError), pyarrow's
# errors (ArrowInvalid is a ValueError; a stream cut inside a message is an OSError)
READ_ERRORS: tuple[type[Exception], ...] = (
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    OSError,
    OverflowError,
    RecursionError,
) + ((pa.ArrowException,) if pa is not None else ())


def media_type(response: httpx.Response) -> str:
    """The response's media type, lower case, without parameters ("" when absent)."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def decoded_json(status: int, content_type: str, body: bytes, expected: str = "application/json") -> Any:
    """A success's JSON body, decoded; raises :class:`InvalidAnswer` for another media type or a body not JSON."""
    if content_type != "application/json":
        shown = body[:SHOWN_BYTES].decode("utf-8", "replace")
        raise InvalidAnswer(status, content_type, f"expected {expected}; it begins {shown!r}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, or nested past the recursion limit
        raise InvalidAnswer(status, content_type, f"the body is not JSON ({type(error).__name__}: {error})") from None


def segment(value: str) -> str:
    """``value`` (a model name, say) as exactly one URL path segment.

    Every character but letters, digits and ``_.-~`` is percent-escaped (``?``,
    ``#``, ``%``, spaces...), and the dot segments ``.`` and ``..``, which httpx
    (and proxies) would resolve against the path before them, are sent as
    ``%2E`` and ``%2E%2E``: the server reads the name back as it was typed and
    answers 404 for a model it does not serve. Raises ValueError for an empty
    string and for one holding ``/``: the server (Starlette) and many proxies
    decode ``%2F`` before routing, so no segment carries them (no model's name
    holds either), and for one holding a lone surrogate (no UTF-8 encodes it). Raises TypeError for anything but
    a ``str``.
    """
    if not isinstance(value, str):
        raise TypeError(f"a model's name is a str (e.g. 'gmm'), not {type(value).__name__}: {value!r}")
    if value == "" or "/" in value:
        raise ValueError(f"{value!r} cannot be a URL path segment: a name is not empty and holds no '/'")
    try:
        escaped = quote(value, safe="")  # percent-escapes the UTF-8 bytes of the name
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): not a character, no UTF-8 bytes, no URL
        raise ValueError(f"{value!r} cannot be a URL path segment: it holds a lone surrogate") from None
    return escaped.replace(".", "%2E") if escaped in (".", "..") else escaped


def plain(value: Any) -> Any:
    """NumPy values as the Python ones JSON holds, in lists, tuples and dicts too.

    A NumPy array becomes a (nested) list, a NumPy scalar (``np.float32(1.5)``,
    ``np.int64(3)``, ``np.bool_``) or 0-d array the Python number: its value,
    floats exactly (a float32 is widened to the float64 it equals; a long
    double is rounded to the nearest float64, as JSON holds no wider number).
    A set becomes a list, sorted (``include={"q", "samples"}``). Text stays text (the server judges it). Raises
    ValueError for complex,
    date and time, bytes and object arrays or scalars: JSON has no value for
    them. Anything else is returned as it is.
    """
    if isinstance(value, np.ndarray | np.generic):
        kind = value.dtype.kind
        if kind not in "biufU":
            raise ValueError(f"a NumPy value of dtype {value.dtype} is not a real number, bool or text JSON can hold")
        if kind == "f" and value.dtype.itemsize > 8:  # long double: tolist() keeps NumPy scalars json cannot write
            value = value.astype(np.float64)
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):  # include={"q", "samples"}: JSON has no sets; a list in a stable order
        return sorted((plain(v) for v in value), key=str)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def observations(y: Any) -> Any:
    """A request's ``y``, a number or a sequence of numbers (lists, tuples, 0-d or 1-d NumPy arrays), for JSON.

    NumPy values become Python numbers (:func:`plain`). The values are judged
    by the server (an ApiError 422 for NaN, infinities, numbers beyond +-1e9,
    booleans or text); raises ValueError for a shape the API has no place for:
    an array of 2 or more dimensions, or a sequence holding sequences, and
    for a container with no order or no length (a set, a generator: y's
    order is the answer's).
    """
    if not isinstance(y, list | tuple | np.ndarray | np.generic | int | float | str | bool) and y is not None:
        raise ValueError(f"y is a number or a list of numbers (a list, tuple or NumPy array), not a {type(y).__name__}")
    if isinstance(y, np.ndarray) and y.ndim > 1:
        raise ValueError(f"y is a number or a list of numbers (a 0-d or 1-d array), not an array of shape {y.shape}")
    y = plain(y)
    if isinstance(y, list) and any(isinstance(v, list) for v in y):
        raise ValueError("y is a number or a list of numbers, not a list holding lists or arrays")
    return y


def column(values: list) -> np.ndarray:
    """A sample column as numpy: float64, with NaN where the latent does not exist (null)."""
    return (
        np.array([np.nan if v is None else v for v in values], dtype=float)
        if None in values
        else np.asarray(values, dtype=float)
    )


@dataclass(frozen=True)
class Posterior:
    """One network's answer for one observation, as arrays (a part the request left out is empty or None)."""

    y: float
    objective: str
    branch_latents: list[dict[str, int]]
    branch_probabilities: np.ndarray
    branch_means: np.ndarray
    branch_stds: np.ndarray
    x: np.ndarray
    latents: dict[str, np.ndarray]
    log_weights: np.ndarray
    diagnostics: dict[str, Any]
    exact: dict[str, Any]
    resampled: dict[str, np.ndarray] | None = None
    versions: dict[str, str] = field(default_factory=dict)  # {objective: version} of the networks that answered
    # the decoded JSON result (JSON answers only: an Arrow answer's numbers are in the arrays above, not copied here)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    summary: dict[str, Any] | None = None  # {"q" | "weighted" | "exact": {"quantiles", "intervals", ...}}
    # this observation's seed (the request's for a scalar y, or the one drawn): {"y": y, "seed": seed} replays it
    seed: int | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Posterior:
        branches = (body.get("q") or {"branches": []})["branches"]
        samples = {name: column(values) for name, values in (body.get("samples") or {"x": []}).items()}
        resampled = body.get("resampled")
        return cls(
            y=float(body["y"]),  # a number in every answer (ValueError otherwise: the body is not one)
            objective=body["objective"],
            branch_latents=[b["latents"] for b in branches],
            branch_probabilities=np.array([b["probability"] for b in branches]),
            branch_means=np.array([b["mean"] for b in branches]),
            branch_stds=np.array([b["std"] for b in branches]),
            x=samples.pop("x"),
            latents=samples,
            log_weights=column(body.get("log_weights", [])),
            diagnostics=body.get("diagnostics") or {},
            exact=body.get("exact") or {},
            resampled=None if resampled is None else {name: column(v) for name, v in resampled.items()},
            versions=body.get("versions", {}),
            raw=body,
            summary=body.get("summary"),
            seed=body.get("seed"),
        )


def parse(body: dict[str, Any]) -> Posterior | dict[str, Posterior]:
    if "objectives" in body:
        return {name: Posterior.from_json(result) for name, result in body["objectives"].items()}
    return Posterior.from_json(body)


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects flat, names joined by dots: {"cross_check": {"missed_mass": m}} -> "cross_check.missed_mass"."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out[prefix + key] = value
    return out


@dataclass(frozen=True)
class PosteriorArrays:
    """One network's answers for every observation of a request, column by column.

    ``x``, ``log_weights`` and each of ``latents`` and ``resampled`` are
    ``(observations, samples)`` float64 (NaN where the JSON has null: a latent
    absent in a sample's branch, a non-finite weight); the branch arrays are
    ``(observations, branches)``; ``diagnostics``, ``exact`` and ``summary`` map
    dotted field names (``"cross_check.missed_mass"``, ``"q.quantiles.0.05"``,
    ``"q.intervals.0.95"`` as ``(observations, 2)``) to ``(observations,)`` arrays.
    A part the request left out is None or empty. Read from Arrow, the arrays
    are read-only views of the answer's buffer (``np.array(a)`` copies one);
    from JSON they are writable.
    """

    objective: str
    y: np.ndarray
    seeds: np.ndarray
    versions: list[dict[str, str]]
    branch_latents: list[dict[str, int]]
    branch_probabilities: np.ndarray | None
    branch_means: np.ndarray | None
    branch_stds: np.ndarray | None
    x: np.ndarray | None
    latents: dict[str, np.ndarray]
    log_weights: np.ndarray | None
    diagnostics: dict[str, np.ndarray]
    exact: dict[str, np.ndarray]
    resampled: dict[str, np.ndarray] | None
    summary: dict[str, np.ndarray]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> PosteriorArrays:
        """From one objective's results of a JSON answer; ValueError where results hold different parts or draws."""
        first = rows[0]
        for row in rows[1:]:  # a part (or a kind of draw) in one result and not in another: no column to make
            if row.keys() != first.keys():
                raise ValueError(f"its results hold different parts: {sorted(first)} and {sorted(row)}")
            for name in ("samples", "resampled"):
                if name in first and (not isinstance(row[name], dict) or row[name].keys() != first[name].keys()):
                    raise ValueError(f"its results' {name} hold different draws")

        def part(name: str) -> dict[str, np.ndarray]:
            if name not in first:
                return {}
            flat = [flatten(row[name]) for row in rows]
            return {key: _json_column([f.get(key) for f in flat]) for key in flat[0]}

        def samples(name: str) -> dict[str, np.ndarray] | None:
            if name not in first:
                return None
            return {key: np.array([row[name][key] for row in rows], dtype=float) for key in first[name]}

        branches = [row["q"]["branches"] for row in rows] if "q" in first else None
        drawn = samples("samples")
        return cls(
            objective=first["objective"],
            y=np.array([row["y"] for row in rows], dtype=float),
            seeds=np.array([row["seed"] for row in rows], dtype=np.int64),
            versions=[row["versions"] for row in rows],
            branch_latents=[b["latents"] for b in branches[0]] if branches else [],
            branch_probabilities=None if branches is None else _branch(branches, "probability"),
            branch_means=None if branches is None else _branch(branches, "mean"),
            branch_stds=None if branches is None else _branch(branches, "std"),
            x=None if drawn is None else drawn.pop("x"),
            latents=drawn or {},
            log_weights=np.array([row["log_weights"] for row in rows], dtype=float) if "log_weights" in first else None,
            diagnostics=part("diagnostics"),
            exact=part("exact"),
            resampled=samples("resampled"),
            summary=part("summary"),
        )

    @classmethod
    def from_arrow(cls, table: Any) -> PosteriorArrays:
        """From the rows of one objective of an Arrow answer (see the README's "Answer formats")."""
        names = table.column_names
        n = len(table)

        def struct(name: str) -> dict[str, np.ndarray]:
            if name not in names:
                return {}
            return {key: _numpy(values, n) for key, values in _leaves(_whole(table.column(name)), "")}

        def samples(name: str) -> dict[str, np.ndarray] | None:
            """Floats, as from JSON: latents too (NaN where absent)."""
            return {k: v.astype(float, copy=False) for k, v in struct(name).items()} if name in names else None

        branch_latents: list[dict[str, int]] = []
        probabilities = means = stds = None
        if "q" in names:
            branches = _whole(table.column("q")).field("branches")
            items = branches.flatten()
            probabilities, means, stds = (
                _numpy(items.field(k), n).reshape(n, -1) for k in ("probability", "mean", "std")
            )
            first = items.field("latents").slice(0, branches.type.list_size).to_pylist()
            branch_latents = [{k: v for k, v in latents.items() if v is not None} for latents in first]
        drawn = samples("samples")
        versions = _versions(_whole(table.column("versions")))
        return cls(
            objective=table.column("objective")[0].as_py(),
            y=table.column("y").to_numpy(),
            seeds=table.column("seed").to_numpy(),
            versions=versions,
            branch_latents=branch_latents,
            branch_probabilities=probabilities,
            branch_means=means,
            branch_stds=stds,
            x=None if drawn is None else drawn.pop("x"),
            latents=drawn or {},
            log_weights=_numpy(_whole(table.column("log_weights")), n) if "log_weights" in names else None,
            diagnostics=struct("diagnostics"),
            exact=struct("exact"),
            resampled=samples("resampled"),
            summary=struct("summary"),
        )


def refuse_unless_success(response: httpx.Response) -> None:
    """Raise :class:`ApiError` with the server's ``detail`` (else its text) for any status but a 2xx; the body read."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    # not this server's error object (a proxy's page, a JSON list): its text
    detail = body["detail"] if isinstance(body, dict) and "detail" in body else response.text or response.reason_phrase
    raise ApiError(response.status_code, detail, retry_after(response.headers.get("retry-after")))


def retry_after(value: str | None) -> float | None:
    """The delay a Retry-After header gives in seconds (RFC 9110, 10.2.3: delay-seconds), else None."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def read_into_buffer(response: httpx.Response) -> Any:
    """An open (streamed) response's body, copied chunk by chunk as it arrives into one buffer of its Content-Length.

    Returns a ``pyarrow.Buffer`` (the IPC reader and the arrays it gives read
    it in place), or ``bytes`` where the length is not announced or the body
    is compressed (then httpx decodes and joins it). ``response.read()`` joins
    the chunks only after the last one has come: for a 16 MB answer that copy
    (8 ms, most of it faulting in fresh pages) followed the transfer, where
    here each chunk's copy overlaps the next one's arrival, into memory
    Arrow's allocator reuses from one answer to the next. A length over
    :data:`MAX_PREALLOCATED_BYTES` is not reserved ahead (a broken proxy or a
    hostile server could announce any): that body is read as it comes.
    Raises ``httpx.RemoteProtocolError`` if the server sends more or fewer
    bytes than it announced (as httpx does).
    """
    length = response.headers.get("content-length", "")
    if (
        not (length.isascii() and length.isdigit())
        or response.headers.get("content-encoding", "identity").lower() != "identity"
    ):
        return response.read()
    total = int(length)
    if total > MAX_PREALLOCATED_BYTES:  # a length this large is not reserved on the server's word: read as it comes
        body = response.read()
        if len(body) != total:
            raise httpx.RemoteProtocolError(f"the answer's body has {len(body)} bytes, not its Content-Length {total}")
        return body
    buffer = pa.allocate_buffer(total)
    view, filled = memoryview(buffer).cast("B"), 0
    for chunk in response.iter_bytes():  # identity: the bytes as sent (also from a response already read)
        if filled + len(chunk) > total:
            raise httpx.RemoteProtocolError(f"the answer's body runs past its Content-Length {total}")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != total:
        raise httpx.RemoteProtocolError(f"the answer's body ended after {filled} of its {total} bytes")
    return buffer


def arrow_table(body: Any) -> Any:
    """An Arrow IPC stream (a ``pyarrow.Buffer`` or bytes) as one table, read in place.

    Raises pyarrow's errors for a stream that does not read, and ValueError for bytes after its end-of-stream
    marker, or for a stream without one (:func:`reading` makes both InvalidAnswer): the reader stops at the
    marker and would ignore what follows, and reads a stream cut between two messages as a whole one.
    """
    source = pa.BufferReader(body)
    table = pa.ipc.open_stream(source).read_all()
    if source.tell() != source.size():
        raise ValueError(f"{source.size() - source.tell()} bytes follow the end of its Arrow stream")
    if source.size() < len(END_OF_STREAM) or bytes(pa.py_buffer(body)[-len(END_OF_STREAM) :]) != END_OF_STREAM:
        raise ValueError("its Arrow stream has no end-of-stream marker: it was cut short")
    return table


END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker, then a message of length 0 (Arrow IPC)


def _json_column(values: list[Any]) -> np.ndarray:
    """JSON values of one field as numpy, typed as Arrow's reading (:func:`_numpy`).

    Bools; int64; float64 with NaN for null; lists of numbers (an interval's
    ``[low, high]``) as ``(rows, width)`` float64, NaN for null (a null list: a
    row of NaN); else objects (text).
    """
    kinds = {type(v) for v in values}
    if list in kinds and kinds <= {list, type(None)}:
        width = max(len(v) for v in values if v is not None)
        return np.array([[math.nan] * width if v is None else v for v in values], dtype=float)
    if kinds <= {bool}:
        return np.array(values, dtype=bool)
    if kinds <= {int}:
        return np.array(values, dtype=np.int64)
    if kinds <= {int, float, type(None)}:
        return np.array(values, dtype=float)
    return np.array(values, dtype=object)


def _branch(branches: list[list[dict[str, Any]]], key: str) -> np.ndarray:
    return np.array([[b[key] for b in row] for row in branches], dtype=float)


def _leaves(array: Any, prefix: str) -> list[tuple[str, Any]]:
    """The leaf columns of nested structs, with their dotted names.

    A nested struct that is null in every row (``diagnostics.cross_check`` when
    no check ran) is one all-NaN column under its own name, as the JSON's null
    reads (:func:`flatten`), not a NaN column per field.
    """
    if pa is not None and pa.types.is_struct(array.type):
        if prefix and len(array) and array.null_count == len(array):
            return [(prefix[:-1], pa.nulls(len(array), pa.float64()))]
        out = []
        for kind, values in zip(array.type, array.flatten()):  # flatten: a null struct makes its fields null
            out += _leaves(values, f"{prefix}{kind.name}.")
        return out
    return [(prefix[:-1], array)]


def _whole(column: Any) -> Any:
    """A column as one array: its only chunk as it is (an answer's usual case: no copy), else the chunks joined."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _versions(column: Any) -> list[dict[str, str]]:
    """Per row, {objective: version} of the networks that answered (a struct of dictionary columns, null: none).

    Decoded from each column's few codes rather than row by row (``to_pylist``: 12 ms for 1000 rows).
    """
    names, tables, codes = [kind.name for kind in column.type], [], []
    for values in column.flatten():
        tables.append(values.dictionary.to_pylist() + [None])  # code -1: null
        codes.append(values.indices.fill_null(-1).to_numpy(zero_copy_only=False).tolist())
    seen: dict[tuple, dict[str, str]] = {}  # each combination of codes decoded once (an answer has one or two)
    out = []
    for key in zip(*codes):
        if key not in seen:
            seen[key] = {name: table[code] for name, table, code in zip(names, tables, key) if table[code] is not None}
        out.append(dict(seen[key]))  # a dict of its own per row
    return out


def _numpy(array: Any, rows: int) -> np.ndarray:
    """An Arrow column as numpy: fixed-size lists as ``(rows, size)``; nulls as NaN (numbers) or None (text)."""
    if pa is not None and pa.types.is_fixed_size_list(array.type):
        return _numpy(array.flatten(), rows).reshape(rows, -1)
    if pa is not None and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)) and array.null_count:
        return array.to_numpy(zero_copy_only=False).astype(float)
    return array.to_numpy(zero_copy_only=False)


def posterior_rows(arrays: PosteriorArrays, table: Any) -> list[Posterior]:
    """Per observation, the :class:`Posterior` view of one objective's Arrow rows (numbers as views of ``arrays``)."""
    empty = np.empty(0)

    def nested(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in table.column_names else [None] * len(table)

    diagnostics, exact, summary = nested("diagnostics"), nested("exact"), nested("summary")
    return [
        Posterior(
            y=float(arrays.y[i]),
            objective=arrays.objective,
            branch_latents=arrays.branch_latents,
            branch_probabilities=empty if arrays.branch_probabilities is None else arrays.branch_probabilities[i],
            branch_means=empty if arrays.branch_means is None else arrays.branch_means[i],
            branch_stds=empty if arrays.branch_stds is None else arrays.branch_stds[i],
            x=empty if arrays.x is None else arrays.x[i],
            latents={name: values[i] for name, values in arrays.latents.items()},
            log_weights=empty if arrays.log_weights is None else arrays.log_weights[i],
            diagnostics=diagnostics[i] or {},
            exact=exact[i] or {},
            resampled=None if arrays.resampled is None else {k: v[i] for k, v in arrays.resampled.items()},
            versions=arrays.versions[i],
            summary=summary[i],
            seed=int(arrays.seeds[i]),
        )
        for i in range(len(arrays.y))
    ]


@contextlib.contextmanager
def reading(status: int, media: str) -> Iterator[None]:
    """Errors met reading a success's body as the answer, raised as :class:`InvalidAnswer` (the body's fault)."""
    try:
        yield
    except InvalidAnswer:
        raise
    except READ_ERRORS as error:
        kind = "Arrow" if media == ARROW else "JSON"
        reason = f"the body does not read as the service's {kind} answer ({type(error).__name__}: {error})"
        raise InvalidAnswer(status, media, reason) from None


def requested_y(body: dict[str, Any]) -> np.ndarray:
    """The observations the request asked about, ``(observations,)`` float64: the answer echoes them, row by row."""
    return np.asarray(body["y"] if isinstance(body["y"], list) else [body["y"]], dtype=float)


def requested_objectives(objective: str) -> list[str]:
    """The networks that answer a request's ``objective``: "both" is pq and qp, in this order (as the server's)."""
    return ["pq", "qp"] if objective == "both" else [objective]


DEFAULT_PARTS = frozenset({"q", "samples", "log_weights", "diagnostics", "exact"})  # and "resampled" with resample


def answer_parts(body: dict[str, Any]) -> frozenset[str]:
    """The parts the answer to ``body`` holds: its ``include``'s ("summary" is "summary.q"), or the default.

    The default is q, samples, log_weights, diagnostics and exact, and resampled with ``"resample": true``
    (README, "Answers sized for their use"). The server's own rule is ``service.schemas.resolve_parts``; the
    light client does not install the service, so the rule is written here too, and a test holds the two equal
    for every ``include``.
    """
    include = body.get("include")
    if include is None:
        return DEFAULT_PARTS | ({"resampled"} if body.get("resample") else set())
    return frozenset("summary.q" if part == "summary" else part for part in include)


def held_parts(arrays: PosteriorArrays) -> frozenset[str]:
    """The parts one objective's columns hold, named as ``include`` names them."""
    present = {
        "q": arrays.branch_probabilities is not None,
        "samples": arrays.x is not None,
        "log_weights": arrays.log_weights is not None,
        "diagnostics": bool(arrays.diagnostics),
        "exact": bool(arrays.exact),
        "resampled": arrays.resampled is not None,
    }
    sources = {f"summary.{name.split('.')[0]}" for name in arrays.summary}
    return frozenset({part for part, held in present.items() if held} | sources)


def check_arrays(arrays: PosteriorArrays, objective: str, y: np.ndarray, body: dict[str, Any]) -> None:
    """One objective's columns answer this request: its objective, its observations in order, numbers as numbers.

    Raises ValueError (:func:`reading` makes it InvalidAnswer) for an answer of another objective or other
    observations (rows repeated, swapped or missing), a column of numbers that holds something else, draws
    (samples, log weights, resampled) other than ``num_samples`` per observation, or other parts than the
    request asked for (:func:`answer_parts`: samples left out of an answer that asked for them read as none).
    """
    num_samples = body["num_samples"]
    check_versions(arrays.versions, objective, body.get("version"))
    if "seed" in body and not isinstance(body["y"], list) and arrays.seeds.tolist() != [body["seed"]]:
        raise ValueError(f"its seed {arrays.seeds.tolist()} is not the request's {body['seed']}")
    wanted, held = answer_parts(body), held_parts(arrays)
    if held != wanted:
        missing, extra = ", ".join(sorted(wanted - held)) or "none", ", ".join(sorted(held - wanted)) or "none"
        raise ValueError(f"its parts are not the request's: missing {missing}; not asked for {extra}")
    if arrays.objective != objective:
        raise ValueError(f"it answers objective {arrays.objective!r} where the request asked for {objective!r}")
    if arrays.y.dtype != np.float64 or not np.array_equal(arrays.y, y):
        raise ValueError(f"its observations {arrays.y[:5].tolist()} are not the request's {y[:5].tolist()}")
    if arrays.seeds.dtype.kind not in "iu":
        raise ValueError(f"its seeds are {arrays.seeds.dtype}, not whole numbers")
    numbers = {"x": arrays.x, "log_weights": arrays.log_weights}
    numbers |= {"branch probabilities": arrays.branch_probabilities, "branch means": arrays.branch_means}
    numbers |= {"branch stds": arrays.branch_stds, **arrays.latents, **(arrays.resampled or {})}
    for name, column in numbers.items():
        if column is not None and (column.dtype != np.float64 or len(column) != len(y)):
            raise ValueError(f"its {name} column is {column.dtype} of {len(column)} rows, not numbers per observation")
    resampled = {f"resampled {name}": column for name, column in (arrays.resampled or {}).items()}
    draws = {"x": arrays.x, "log_weights": arrays.log_weights, **arrays.latents, **resampled}
    for name, column in draws.items():
        if column is not None and column.shape != (len(y), num_samples):
            raise ValueError(f"its {name} is {column.shape}, not {num_samples} draws for each of {len(y)} observations")
        if column is not None and np.isinf(column).any():  # the service writes a non-finite weight as null (NaN)
            raise ValueError(f"its {name} holds an infinite value, which the service never writes")
    for name, column in (("x", arrays.x), ("resampled x", (arrays.resampled or {}).get("x"))):
        if column is not None and not np.isfinite(column).all():  # every draw of x is a number
            raise ValueError(f"its {name} holds a value that is not a finite number")
    check_branches(arrays)


def check_branches(arrays: PosteriorArrays) -> None:
    """q's branches are a distribution: probabilities in [0, 1] summing to 1, finite means, positive stds."""
    if arrays.branch_probabilities is None or arrays.branch_means is None or arrays.branch_stds is None:
        return
    probabilities, means, stds = arrays.branch_probabilities, arrays.branch_means, arrays.branch_stds
    tolerance = 1e-5  # the service's sum to 1 within 1e-14 (float64); room for a writer that rounds
    if not (
        np.all((probabilities >= 0) & (probabilities <= 1 + tolerance))
        and np.allclose(probabilities.sum(-1), 1, rtol=0, atol=tolerance)
    ):
        raise ValueError("its branch probabilities are not a distribution (each in [0, 1], summing to 1)")
    if not (np.isfinite(means).all() and np.all(stds > 0) and np.isfinite(stds).all()):
        raise ValueError("its branch means are not finite numbers, or its stds not positive finite numbers")


VERSION_DIGITS = 16  # a version is the first 16 hex digits of its weights' sha256; a pin may give all 64


def check_versions(versions: list[dict[str, str]], objective: str, pin: str | dict[str, str] | None) -> None:
    """Every row was answered by the pinned networks: ValueError naming the first that was not.

    A str pins ``objective``'s network; a mapping pins each network it names (the answering one must be among
    each row's ``versions``; another, the cross-check's, only where a row names it).
    """
    pins = {objective: pin} if isinstance(pin, str) else dict(pin or {})
    for row in versions:
        if not isinstance(row, dict):
            raise ValueError(f"its versions are {row!r}, not a mapping of objective to version")
        for name, wanted in pins.items():
            found = row.get(name)
            if (found is None and name == objective) or (found is not None and found != wanted[:VERSION_DIGITS]):
                raise ValueError(f"its {name} network is version {found}, where the request pinned {wanted}")


def check_seed(found: Any, body: dict[str, Any]) -> None:
    """The answer's seed (a batch's, or a single answer's) is the request's, where it sent one; else ValueError."""
    if "seed" in body and (isinstance(found, bool) or found != body["seed"]):
        raise ValueError(f"its seed {found!r} is not the request's {body['seed']}")


def check_model(found: Any, model: str) -> None:
    """The model that answered is the one asked about; else ValueError (:func:`reading`)."""
    if found != model:
        raise ValueError(f"it answers for model {found!r}, the request asked about {model!r}")


def leaf_type(kind: Any) -> Any:
    """The type of a (nested) list column's values."""
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return kind


def check_arrow_types(schema: Any) -> None:
    """The columns of numbers hold the types the service writes (README, "Answer formats"); else ValueError.

    The reader converts samples to float64 whatever they hold (text included): their types are checked here.
    """
    wanted = {"y": pa.types.is_float64, "seed": pa.types.is_integer, "log_weights": pa.types.is_float64}
    for name, test in wanted.items():
        if name in schema.names and not test(leaf_type(schema.field(name).type)):
            raise ValueError(f"its {name} column is {schema.field(name).type}")
    for part in ("samples", "resampled"):
        if part in schema.names:
            for field in schema.field(part).type:
                test = pa.types.is_float64 if field.name == "x" else pa.types.is_integer  # x, then the latents
                if not test(leaf_type(field.type)):
                    raise ValueError(f"its {part}.{field.name} column is {field.type}")


def arrow_answer(table: Any, model: str, body: dict[str, Any], rows: bool) -> Any:
    """An Arrow answer (one row per observation and objective) as :meth:`AmortizedClient._posterior` returns it."""
    metadata = table.schema.metadata or {}
    check_model(metadata.get(b"model", b"").decode(), model)
    seed = metadata.get(b"seed", b"").decode()
    plain_digits = seed.isascii() and seed.isdigit() and str(int(seed)) == seed  # not "03", not other scripts'
    check_seed(int(seed) if plain_digits else seed or None, body)
    check_arrow_types(table.schema)
    objectives, y = requested_objectives(body["objective"]), requested_y(body)
    width = len(objectives)
    if table.num_rows != len(y) * width:
        raise ValueError(f"{table.num_rows} rows, not {len(y)} observations x {width} objectives")
    found = table.column("objective").to_pylist()
    if found != objectives * len(y):
        raise ValueError(f"its rows answer objectives {found[:4]}..., not {objectives} for each observation")
    parts = {
        name: table.take(np.arange(j, len(table), width)) if width > 1 else table for j, name in enumerate(objectives)
    }
    columns = {name: PosteriorArrays.from_arrow(part) for name, part in parts.items()}
    for name, arrays in columns.items():
        check_arrays(arrays, name, y, body)
    if not rows:
        return columns if body["objective"] == "both" else columns[body["objective"]]
    per_objective = {name: posterior_rows(columns[name], part) for name, part in parts.items()}
    answers: list[Any] = (
        [dict(zip(per_objective, row)) for row in zip(*per_objective.values())]
        if body["objective"] == "both"
        else list(per_objective[body["objective"]])
    )
    return answers if isinstance(body["y"], list) else answers[0]


def json_answers(answer: Any, model: str, body: dict[str, Any], rows: bool) -> Any:
    """A decoded JSON answer (:func:`decoded_json`) as :meth:`AmortizedClient._posterior` returns it."""
    results = answer.get("results", [answer]) if isinstance(answer, dict) else None
    if not (isinstance(results, list) and results and all(isinstance(r, dict) for r in results)):
        raise ValueError("the JSON is not a posterior answer (an object, or results that are objects)")
    y = requested_y(body)
    if len(results) != len(y) or ("results" in answer) != isinstance(body["y"], list):
        raise ValueError(f"{len(results)} results, not the {len(y)} observations asked about")
    objectives = requested_objectives(body["objective"])
    if "results" in answer:  # a batch names its model, and so does each result
        check_model(answer.get("model"), model)
    check_seed(answer.get("seed"), body)  # a batch's seed, or the one result's
    for result in results:
        check_model(result.get("model"), model)
        if body["objective"] == "both" and sorted(result.get("objectives", {})) != objectives:  # JSON: any key order
            raise ValueError(f"a result answers objectives {list(result.get('objectives', {}))}, not {objectives}")
        for name, value in (("y", result.get("y")), ("seed", result.get("seed"))):  # numbers, not text or booleans
            if isinstance(value, bool) or not isinstance(value, (int, float) if name == "y" else int):
                raise ValueError(f"a result's {name} is {value!r}, not a number")
    per_objective = (
        {name: [r["objectives"][name] for r in results] for name in objectives}
        if body["objective"] == "both"
        else {objectives[0]: results}
    )
    columns = {name: PosteriorArrays.from_json(part) for name, part in per_objective.items()}
    for name, part in per_objective.items():
        if any(r.get("objective") != name for r in part):
            raise ValueError(f"a result answers another objective than {name!r}")
        if body["objective"] == "both":  # each objective's answer names its model and y, as the row holding it
            for inner, outer in zip(part, results, strict=True):
                check_model(inner.get("model"), model)
                if inner.get("y") != outer.get("y"):
                    raise ValueError(f"a result's y {outer.get('y')!r} is not its {name} answer's {inner.get('y')!r}")
        check_arrays(columns[name], name, y, body)
    if rows:
        answers = [parse(r) for r in results]
        return answers if isinstance(body["y"], list) else answers[0]
    return columns if body["objective"] == "both" else columns[objectives[0]]


class AmortizedClient:
    """Synchronous client over httpx; use as a context manager or call ``close()``.

    ``format``: "arrow" (the default; JSON when pyarrow is missing or the
    server refuses it with 406) or "json". ``compress``: accept compressed
    answers (worth it on slow links; on loopback and LAN the CPU costs more
    than the bytes saved: bench/answer_formats.py): zstd where httpx can decode
    it (with the ``zstandard`` package, which the light install does not pull),
    and gzip. An ``accept-encoding`` among ``headers`` overrides both.
    ``timeout`` (seconds) is httpx's: it bounds each step of a call
    (connecting, each read, each write, waiting for a pooled connection), not
    the whole call, so a server that keeps sending, however slowly, holds a
    call until it is done; where a whole call must end in time, run it in a
    thread and stop waiting for it (``concurrent.futures``' ``result(timeout)``).
    Raises ValueError for another ``format``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 60.0,
        format: str = "arrow",
        compress: bool = False,
        **httpx_options: Any,
    ) -> None:
        if format not in ("arrow", "json"):
            raise ValueError(f"format must be 'arrow' or 'json', not {format!r}")
        self.format = "arrow" if format == "arrow" and pa is not None else "json"
        headers = httpx.Headers(httpx_options.pop("headers", None))
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **httpx_options)
        # httpx's own default Accept-Encoding names the codings it decodes in this environment (zstd only with the
        # zstandard package): advertising one it cannot decode would hand the raw compressed bytes to the parsers
        decodable = {coding.strip() for coding in self._http.headers.get("accept-encoding", "gzip").split(",")}
        accepted = [coding for coding in ("zstd", "gzip") if coding in decodable]
        # on loopback and fast links compressing costs more than it saves: uncompressed unless asked
        self._http.headers["accept-encoding"] = ", ".join(accepted) if compress and accepted else "identity"
        self._http.headers.update(headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The server's answer; raises ApiError for any but a 2xx (a redirect not followed carries no answer)."""
        response = self._http.request(method, path, **kwargs)
        refuse_unless_success(response)
        return response

    def _arrow_body(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
        """The answer's status, media type and body: an Arrow answer in one buffer (:func:`read_into_buffer`).

        An answer in another media type (a server that ignores ``Accept``) comes as bytes; raises ApiError as
        ``_response``.
        """
        with self._http.stream(method, path, **kwargs) as response:
            if not response.is_success:
                response.read()
                refuse_unless_success(response)
            media = media_type(response)
            return response.status_code, media, read_into_buffer(response) if media == ARROW else response.read()

    def _described(self, path: str, is_description: Callable[[Any], bool], what: str) -> Any:
        """The JSON description at GET ``path``.

        Raises ApiError as ``_response``, InvalidAnswer where the body is not JSON or not ``what``
        (``is_description`` of it is false).
        """
        response = self._response("GET", path, headers={"accept": "application/json"})
        status, media = response.status_code, media_type(response)
        described = decoded_json(status, media, response.content)
        if not is_description(described):
            raise InvalidAnswer(status, media, f"the JSON is not {what}")
        return described

    def models(self) -> list[dict[str, Any]]:
        """Every served model's description (name, title, latents, branches, params); raises as :meth:`model`."""
        return self._described(
            "/v1/models",
            lambda d: isinstance(d, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in d),
            "a list of model descriptions",
        )

    def model(self, name: str) -> dict[str, Any]:
        """The model's description, with its served artifacts' manifests.

        Raises ApiError 404 for a model the server does not serve, InvalidAnswer for a success that is not a
        description.
        """
        path = f"/v1/models/{segment(name)}"
        return self._described(path, lambda d: isinstance(d, dict) and d.get("name") == name, f"{name}'s description")

    def ready(self) -> bool:
        return self._http.get("/health/ready").status_code == 200

    def _posterior(self, model: str, body: dict[str, Any], rows: bool) -> Any:
        """The answer to ``body``, in Arrow while the server speaks it, else in JSON.

        Per objective its columns (:class:`PosteriorArrays`), or with ``rows`` a :class:`Posterior` per
        observation, laid out as :meth:`posterior_arrays` and :meth:`posterior` return them. Raises ApiError for
        a refusal and :class:`InvalidAnswer` for a success that does not read as the answer to this request (its
        objectives, its number of observations).
        """
        path = f"/v1/models/{segment(model)}/posterior"
        # encoded here, not by httpx (which refuses NaN from 0.28 on): a non-finite y gets the server's 422 either way
        content = json.dumps(body, separators=(",", ":")).encode()
        json_headers = {"content-type": "application/json"}
        reply, answered_json_to_arrow = None, False
        if self.format == "arrow":
            try:
                reply = self._arrow_body("POST", path, content=content, headers=json_headers | {"accept": ARROW})
            except ApiError as error:
                if error.status != 406:
                    raise
                self.format = "json"  # this server speaks JSON only: ask it in JSON from now on
            else:
                status, media, stream = reply
                if media == ARROW:
                    with reading(status, media):
                        return arrow_answer(arrow_table(stream), model, body, rows)
                answered_json_to_arrow = True  # a server that ignores Accept: its answer, read as JSON below
        if reply is None:
            json_headers["accept"] = "application/json"
            response = self._response("POST", path, content=content, headers=json_headers)
            reply = response.status_code, media_type(response), response.content
        status, media, content = reply
        answer = decoded_json(status, media, content, f"{ARROW} or application/json")
        with reading(status, media):
            read = json_answers(answer, model, body, rows)
        if answered_json_to_arrow:
            self.format = "json"  # and asked in JSON from now on
        return read

    @staticmethod
    def _body(
        y: Any,
        objective: str,
        num_samples: int = 1000,
        seed: int | None = None,
        resample: bool = False,
        cross_check: bool = True,
        **more: Any,
    ) -> dict[str, Any]:
        """The request's JSON body, NumPy values as Python ones (:func:`plain`); raises as :func:`observations`."""
        options = {"objective": objective, "num_samples": num_samples, "resample": resample, "cross_check": cross_check}
        if seed is not None:
            options["seed"] = seed
        options.update({key: value for key, value in more.items() if value is not None})
        return {"y": observations(y), **plain(options)}  # y made plain once, by observations

    def posterior_arrays(
        self, model: str, y: float | Sequence[float] | np.ndarray, objective: str = "pq", **options: Any
    ) -> PosteriorArrays | dict[str, PosteriorArrays]:
        """Every observation's answer as columns (:class:`PosteriorArrays`); ``objective="both"`` gives one per loss.

        ``y`` and ``options`` (num_samples, seed, resample, cross_check, version, include): as :meth:`posterior`,
        which says what it raises.
        """
        return self._posterior(model, self._body(y, objective, **options), rows=False)

    def posterior(
        self,
        model: str,
        y: float | Sequence[float] | np.ndarray,
        objective: str = "pq",
        num_samples: int = 1000,
        seed: int | None = None,
        resample: bool = False,
        cross_check: bool = True,
        version: str | dict[str, str] | None = None,
        include: Collection[str] | None = None,
    ) -> Posterior | dict[str, Posterior] | list[Posterior | dict[str, Posterior]]:
        """One answer for a scalar y, a list for a list; ``objective="both"`` gives {"pq": ..., "qp": ...}.

        ``y``: a number, or a list, tuple or 1-d array of them (a 0-d array is a number); NumPy scalars and
        arrays of any real dtype, and NumPy integers for ``num_samples`` and ``seed``, are sent as their values.
        ``version`` pins the network (see ``models()``); a version not served raises ApiError with status 409.
        ``include`` selects the parts (the server's default: all but the summaries).

        Raises ValueError for a ``y`` of 2 or more dimensions (or a list holding lists), ApiError for what the
        server refuses (404 for a model it does not serve, 422 for a non-finite y, one beyond +-1e9, a boolean or
        text, or an option out of its range), and InvalidAnswer for a success that is not the answer to this
        request (a proxy's page, a corrupt body, another model's, objectives or observations). A body that does
        not arrive whole raises httpx's own errors, as every httpx call does: ``httpx.RemoteProtocolError`` (shorter
        or longer than its Content-Length), ``httpx.DecodingError`` (labelled gzip or zstd but not), timeouts.
        """
        body = self._body(y, objective, num_samples, seed, resample, cross_check, version=version, include=include)
        return self._posterior(model, body, rows=True)
