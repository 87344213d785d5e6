"""Answers sized for their use: include, summaries, the Arrow format and compression, through the app."""

import asyncio
import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zstandard
from scipy import optimize, stats

from service.answers import PosteriorQuery, answer
from service.arrow import MEDIA_TYPE as ARROW
from service.middleware import ZstdContexts, ZstdResponder, accepted_coding
from service.schemas import SUMMARY_SOURCES
from tests.test_service import RESPONSE, strict_json

DEFAULT = ["q", "samples", "log_weights", "diagnostics", "exact"]
QUANTILES = ["0.05", "0.25", "0.5", "0.75", "0.95"]
INTERVALS = {"0.8": (0.1, 0.9), "0.95": (0.025, 0.975)}


def raw(client, model, headers=None, **body):
    return client.post(f"/v1/models/{model}/posterior", json=body, headers=headers or {})


def as_json(client, model, **body):
    response = raw(client, model, **body)
    assert response.status_code == 200, response.text
    data = strict_json(response.text)
    RESPONSE.validate_python(data)
    return data


def as_arrow(client, model, **body) -> pa.Table:
    response = raw(client, model, headers={"accept": ARROW}, **body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ARROW and "accept" in response.headers["vary"].lower()
    return pa.ipc.open_stream(response.content).read_all()


def same_bits(a, b, where="") -> None:
    """Equal as JSON values, floats to the bit (-0.0 is not 0.0)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, float) and isinstance(b, float), (where, a, b)
        assert struct.pack("<d", a) == struct.pack("<d", b), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, a, b)
        for key in a:
            same_bits(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (u, v) in enumerate(zip(a, b)):
            same_bits(u, v, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def arrow_rows_as_json(table: pa.Table) -> list[dict]:
    """The Arrow rows in the JSON's shape: a branch's absent latents and the networks that took no part dropped.

    The JSON lists the answering network's version first.
    """
    rows = table.to_pylist()
    for row in rows:
        order = sorted(row["versions"], key=lambda name: name != row["objective"])
        row["versions"] = {k: row["versions"][k] for k in order if row["versions"][k] is not None}
        for branch in (row.get("q") or {}).get("branches", []):
            branch["latents"] = {k: v for k, v in branch["latents"].items() if v is not None}
    return rows


def json_rows(data) -> list[dict]:
    results = data.get("results", [data])
    return [r for result in results for r in (result["objectives"].values() if "objectives" in result else [result])]


@pytest.mark.parametrize(
    "model, body",
    [
        ("gaussian", {"y": 0.8, "objective": "pq", "num_samples": 300, "seed": 5}),
        ("gmm", {"y": [-3.0, 0.0, 1e6], "objective": "both", "num_samples": 200, "seed": 2, "resample": True}),
        ("gmm_discrete", {"y": [-8.0, 12.0], "objective": "qp", "num_samples": 50, "seed": 9, "cross_check": False}),
        (
            "gmm_open",
            {"y": 2.7, "objective": "both", "num_samples": 120, "seed": 4, "include": [*SUMMARY_SOURCES, "q"]},
        ),
        ("gmm_open_k3", {"y": [2.7, -40.0], "num_samples": 0, "seed": 1, "include": ["exact", "summary"]}),
    ],
)
def test_the_arrow_stream_carries_the_json_numbers_to_the_bit(client, model, body):
    data = as_json(client, model, **body)
    table = as_arrow(client, model, **body)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    batch = isinstance(body["y"], list)
    assert metadata == {"model": model, "seed": str(data["seed"]), "batch": str(batch).lower()}
    expected = json_rows(data)
    got = arrow_rows_as_json(table)
    assert len(got) == len(expected) == len(body["y"] if batch else [0]) * (2 if body.get("objective") == "both" else 1)
    for ours, theirs in zip(got, expected):
        same_bits(ours, theirs)
    # per-sample columns read as (observations, samples) arrays without a copy
    if "samples" in table.column_names:
        x = table.column("samples").combine_chunks().field("x")
        assert x.flatten().to_numpy(zero_copy_only=True).reshape(len(table), -1).shape[1] == body["num_samples"]


def test_leaving_parts_out_keeps_the_rest_to_the_byte(client):
    body = {"y": [0.3, -5.0], "objective": "pq", "num_samples": 400, "seed": 8, "resample": True}
    full = raw(client, "gmm_open", **body)
    assert raw(client, "gmm_open", include=[*DEFAULT, "resampled"], **body).content == full.content
    full_rows = json_rows(full.json())
    for include in (["q"], ["samples", "exact"], ["diagnostics"], ["log_weights", "resampled"]):
        rows = json_rows(as_json(client, "gmm_open", include=include, **body))
        for row, whole in zip(rows, full_rows):
            assert list(row) == ["model", "versions", "seed", "y", "objective"] + [p for p in whole if p in include]
            same_bits({k: v for k, v in row.items() if k != "versions"}, {k: whole[k] for k in row if k != "versions"})
            # the cross-check's network answers only for the diagnostics, which alone use it
            checked = "diagnostics" in include or "resampled" in include
            assert row["versions"] == (whole["versions"] if checked else {"pq": whole["versions"]["pq"]})


def mixture_quantile(branches, level):
    probs, means, stds = (np.array([b[k] for b in branches]) for k in ("probability", "mean", "std"))
    f = lambda x: float((probs * stats.norm.cdf(x, means, stds)).sum()) - level  # noqa: E731
    return optimize.brentq(f, (means - 40 * stds).min(), (means + 40 * stds).max(), xtol=1e-14, rtol=1e-15)


@pytest.mark.parametrize("model, y", [("gmm", 0.0), ("gmm_discrete", -3.0), ("gmm_open", 2.7)])
def test_summaries_are_the_quantiles_of_q_of_the_weighted_draws_and_of_the_truth(client, model, y):
    data = as_json(
        client, model, y=y, num_samples=2000, seed=3, include=["q", "samples", "log_weights", *SUMMARY_SOURCES]
    )
    summary = data["summary"]
    assert list(summary) == ["q", "weighted", "exact"]
    levels = [float(a) for a in QUANTILES] + [b for pair in INTERVALS.values() for b in pair]

    def flat(source):
        return summary[source]["quantiles"], summary[source]["intervals"]

    # q: its mixture CDF inverted, independently (scipy's Brent on the answer's own branches)
    quantiles, intervals = flat("q")
    theirs = [mixture_quantile(data["q"]["branches"], level) for level in levels]
    ours = [quantiles[k] for k in QUANTILES] + [v for k in INTERVALS for v in intervals[k]]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    # weighted: NumPy's inverted weighted CDF of the answer's own draws and weights
    x, log_w = np.array(data["samples"]["x"]), np.array(data["log_weights"])
    w = np.exp(log_w - log_w.max())
    quantiles, intervals = flat("weighted")
    ours = [quantiles[k] for k in QUANTILES] + [v for k in INTERVALS for v in intervals[k]]
    assert ours == list(np.quantile(x, levels, weights=w, method="inverted_cdf"))
    # the truth: the exact posterior's mass below each quantile is the level (/v1/models/{model}/exact gives it)
    exact = client.get(f"/v1/models/{model}/exact", params={"y": y})
    assert exact.status_code == 200, exact.text
    quantiles, intervals = flat("exact")
    for key in QUANTILES:
        assert quantiles[key] == pytest.approx(stats_quantile_from_exact(exact.json(), float(key)), abs=1e-9), key
    # discrete probabilities: q's from its branches, the weighted and the exact ones as in diagnostics and exact
    for name, values in summary["q"]["discrete_probabilities"].items():
        for value, p in values.items():
            expected = sum(b["probability"] for b in data["q"]["branches"] if str(b["latents"].get(name)) == value)
            assert p == pytest.approx(expected, rel=1e-12, abs=1e-15)


def stats_quantile_from_exact(exact_body, level):
    """The exact posterior's quantile from the /exact endpoint's components, by scipy."""
    return mixture_quantile(exact_body["results"][0]["components"], level)


def test_summary_means_q_and_the_sources_come_by_name(client):
    """ "summary" is one summary per observation, q's; each source named adds its own, in a fixed order."""
    body = {"y": [0.0, 7.5], "num_samples": 50, "seed": 2}
    plain = raw(client, "gmm_open", **body, include=["summary"])
    named = raw(client, "gmm_open", **body, include=["summary.q"])
    assert plain.status_code == named.status_code == 200 and plain.content == named.content
    assert [list(row["summary"]) for row in json_rows(plain.json())] == [["q"], ["q"]]
    every = as_json(client, "gmm_open", **body, include=["summary.exact", "summary", "summary.weighted"])
    assert [list(row["summary"]) for row in json_rows(every)] == [["q", "weighted", "exact"]] * 2
    for a, b in zip(json_rows(plain.json()), json_rows(every)):
        same_bits(a["summary"]["q"], b["summary"]["q"])


def test_summaries_only_draw_nothing_with_zero_samples(client):
    body = {
        "y": [0.0, 4.0, -30.0],
        "objective": "both",
        "num_samples": 0,
        "include": ["summary", "summary.exact"],
        "seed": 1,
    }
    data = as_json(client, "gmm", **body)
    for row in json_rows(data):
        assert list(row) == ["model", "versions", "seed", "y", "objective", "summary"]
        assert list(row["summary"]) == ["q", "exact"]
    # the same q summary as with draws
    with_draws = as_json(client, "gmm", **{**body, "num_samples": 10})
    for a, b in zip(json_rows(data), json_rows(with_draws)):
        same_bits(a["summary"]["q"], b["summary"]["q"])
        same_bits(a["summary"]["exact"], b["summary"]["exact"])


@pytest.mark.parametrize(
    "body, loc, words",
    [
        ({"y": 0.0, "num_samples": 0}, ["body", "num_samples"], "samples"),
        ({"y": 0.0, "num_samples": 0, "include": ["summary.weighted"]}, ["body", "num_samples"], "summary.weighted"),
        ({"y": 0.0, "include": ["resampled"]}, ["body", "include"], "resample"),
        ({"y": 0.0, "include": []}, ["body", "include"], "at least 1"),
        ({"y": 0.0, "include": ["x"]}, ["body", "include", 0], "'summary'"),
        ({"y": 0.0, "include": "summary"}, ["body", "include"], "list"),
        ({"y": 0.0, "include": ["q"] * 11}, ["body", "include"], "at most 10"),
        ({"y": 0.0, "include": ["x"] * 150_000}, ["body", "include"], "at most 10"),
    ],
)
def test_impossible_includes_get_a_422_naming_the_field(client, body, loc, words):
    response = raw(client, "gmm", **body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and words in detail["msg"], detail


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "application/xml, text/*;q=0.5",
        f"{ARROW};q=0",
        "nonsense",
        f"{ARROW};q=-1, application/json;q=0.1",  # not qvalues: the header cannot be parsed (not q = 1)
        "application/json;q=abc",
        "application/json;q=1.5",
        "application/json;q=0.0001",
        "*/*;q=0",
        # a media range is */*, type/* or type/subtype (RFC 9110, 12.5.1): python-mimeparse matched */json
        "*/json",
        f"*/{ARROW.split('/')[1]}",
        "*/json, text/html",
        # nor a bare *, a type alone, or spaces inside: python-mimeparse read "application /json" as JSON, "*" as */*
        "*",
        "application /json",
        "application/ json",
        "application",
        "/json",
        "application/json/x",
        "text/html, *",
    ],
)
def test_an_unsupported_accept_gets_406_naming_the_supported_types(client, accept):
    response = raw(client, "gmm", headers={"accept": accept}, y=0.0)
    assert response.status_code == 406, response.text
    assert "accept" in response.headers["vary"].lower()
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["header", "accept"]
    assert "application/json" in detail["msg"] and ARROW in detail["msg"]


@pytest.mark.parametrize(
    "accept, media",
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/json", "application/json"),
        (f"{ARROW}, application/json;q=0.5", ARROW),
        (f"application/json;q=0.2, {ARROW}", ARROW),
        # media types are case-insensitive (RFC 9110, 8.3.1)
        ("Application/JSON", "application/json"),
        (ARROW.upper(), ARROW),
        (f"APPLICATION/JSON;Q=0.2, {ARROW.title()}", ARROW),
        # empty list items are allowed (RFC 9110, 5.6.1), and spaces around items and parameters
        ("application/json,", "application/json"),
        (f", {ARROW} ;q=0.9 , ", ARROW),
        # a quoted parameter value may hold a comma or a semicolon (RFC 9110, 5.6.4): one item, not two
        ('application/json; x="a,b"', "application/json"),
        (f'application/json; x="a,b;q=1";q=0.5, {ARROW}; y="c, d"', ARROW),
        (f'{ARROW}; x="a,b";q=0.1, application/json', "application/json"),
    ],
)
def test_accept_chooses_the_format(client, accept, media):
    response = raw(client, "gaussian", headers={"accept": accept} if accept else {}, y=0.0, num_samples=5, seed=1)
    assert response.status_code == 200 and response.headers["content-type"] == media
    # where the server's time went, for the benchmark's breakdown
    assert re.fullmatch(r"answer;dur=[\d.]+, serialise;dur=[\d.]+", response.headers["server-timing"])


@pytest.mark.parametrize("media", ["application/json", ARROW])
def test_large_answers_are_compressed_as_accepted_small_ones_not(client, media):
    body = {"y": [0.1, 2.0], "objective": "both", "num_samples": 1000, "seed": 3}
    plain = raw(client, "gmm_open", headers={"accept": media, "accept-encoding": "identity"}, **body)
    assert "content-encoding" not in plain.headers
    decoders = {"gzip": gzip.decompress, "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}
    for coding, decode in decoders.items():
        # httpx would decode on its own: read the raw bytes off the wire
        with client.stream(
            "POST",
            "/v1/models/gmm_open/posterior",
            json=body,
            headers={"accept": media, "accept-encoding": coding},
        ) as response:
            wire = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == coding and "accept-encoding" in response.headers["vary"].lower()
        assert len(wire) < len(plain.content) / 1.5 and decode(wire) == plain.content
    small = raw(client, "gaussian", headers={"accept-encoding": "gzip, zstd"}, y=0.0, num_samples=1, include=["q"])
    assert len(small.content) < 4096 and "content-encoding" not in small.headers


@pytest.mark.parametrize(
    "header, coding",
    [
        ("gzip", "gzip"),
        ("zstd", "zstd"),
        ("gzip, zstd", "zstd"),
        ("zstd;q=0.5, gzip", "gzip"),
        ("gzip;q=0", None),
        ("*", "zstd"),
        ("*;q=0, gzip", "gzip"),
        ("br, deflate", None),
        ("", None),
        ("gzip;q=bad", None),
        ("zstd;q=0.5;level=1", "zstd"),  # q among other parameters
        ("gzip;level=1;q=0.5, zstd;q=0.4", "gzip"),
        ("zstd;level=1;q=0.5, gzip;q=0.6", "gzip"),
        ("gzip;q=inf, zstd;q=0.1", "zstd"),  # not qvalues: 0
        ("gzip;q=-1", None),
        ("gzip;q=2", None),
        ("gzip;q=1.000, zstd;q=0.999", "gzip"),
        ("GZIP ; Q = 0.3", "gzip"),
        ("x-gzip", "gzip"),  # RFC 9110, 8.4.1.3: x-gzip is gzip
        ("x-gzip;q=0.9, zstd;q=0.5", "gzip"),
    ],
)
def test_accept_encoding_is_weighed(header, coding):
    assert accepted_coding(header) == coding


@pytest.mark.parametrize(
    "lines, media",
    [
        (["text/xml", "application/json"], "application/json"),
        (["text/xml", ARROW], ARROW),
        ([f"{ARROW};q=0.1", "application/json"], "application/json"),
        (["application/json;q=0.1", ARROW], ARROW),
    ],
)
def test_an_accept_given_on_several_lines_is_read_whole(client, lines, media):
    """RFC 9110 (5.3) reads repeated list fields as one joined by commas: Accept: text/xml then Accept:
    application/json was read as text/xml alone (a 406), a second Accept-Encoding line ignored."""
    body = {"y": [0.5] * 40, "num_samples": 200, "seed": 1}
    response = raw(client, "gmm", headers=[("accept", line) for line in lines], **body)
    joined = raw(client, "gmm", headers={"accept": ", ".join(lines)}, **body)
    assert response.status_code == joined.status_code == 200, response.text[:200]
    assert response.headers["content-type"] == media and response.content == joined.content
    for encodings, chosen in (
        (["gzip;q=0.5", "zstd"], "zstd"),
        (["zstd;q=0.1", "gzip"], "gzip"),
        (["identity", "gzip"], "gzip"),
    ):
        headers = [("accept", lines[-1]), *(("accept-encoding", e) for e in encodings)]
        assert raw(client, "gmm", headers=headers, **body).headers.get("content-encoding") == chosen, encodings


def test_a_refused_accept_is_quoted_back_only_in_part(client):
    accept = ", ".join(f"text/x{i}" for i in range(3000))
    response = raw(client, "gmm", headers={"accept": accept}, y=0.0)
    assert response.status_code == 406 and len(response.content) < 1000, len(response.content)
    assert f"({len(accept)} characters)" in response.json()["detail"][0]["msg"]


def test_the_draws_limit_advises_only_what_lowers_the_count(app, client):
    limit = app.state.settings.max_total_samples
    rows = limit // 1000 + 1  # num_samples 1000: over the limit with or without the cross-check
    body = {"y": [0.1] * rows, "num_samples": 1000, "seed": 1}
    checked = raw(client, "gmm", **body)
    assert checked.status_code == 422 and '"cross_check": false' in checked.json()["detail"][0]["msg"]
    for unchecked in ({"cross_check": False}, {"include": ["summary.weighted"]}):  # the check does not run
        refused = raw(client, "gmm", **body, **unchecked)
        assert refused.status_code == 422 and "would draw" in refused.text
        assert "cross_check" not in refused.json()["detail"][0]["msg"].split(":")[-1], refused.text


def test_openapi_documents_include_and_the_formats(client):
    spec = client.get("/openapi.json").json()
    assert "include" in json.dumps(spec["components"]["schemas"]["PosteriorRequest"])
    responses = spec["paths"]["/v1/models/{model}/posterior"]["post"]["responses"]
    assert "406" in responses
    assert set(responses["200"]["content"]) == {"application/json", ARROW}  # both answer formats documented


def test_a_query_built_without_parts_holds_the_default_answer(app):
    """In-process callers (warm-up, benchmarks) that name no parts get today's answer, resampled draws included."""
    served = app.state.registry.models["gmm"]
    rows = answer(PosteriorQuery(served, [0.0], "pq", 20, 1, True, False))
    assert list(rows[0]) == ["model", "versions", "seed", "y", "objective", *DEFAULT, "resampled"]


@pytest.mark.parametrize("values", [["a"] * 100_000, [0.0] + [None] * 100_000, [0.0, "x", 1.0] * 30])
def test_a_422_lists_at_most_fifty_errors_and_counts_the_rest(client, values):
    """Many bad values get the first 50 items and one that counts the others: not a reply of megabytes."""
    response = raw(client, "gmm", y=values)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    bad = [["body", "y", i] for i, v in enumerate(values) if not isinstance(v, float)]
    if len(bad) > 50:
        assert len(detail) == 51 and detail[-1]["type"] == "too_many_errors" and detail[-1]["loc"] == ["body"]
        assert f"and {len(bad) - 50} more errors" in detail[-1]["msg"] and len(response.content) < 20_000
    else:
        assert len(detail) == len(bad) and all(d["type"] != "too_many_errors" for d in detail)
    assert [d["loc"] for d in detail[:50]] == bad[:50]


def test_an_answer_without_diagnostics_runs_no_cross_check(app, client):
    """The check only feeds the diagnostics: without them the other network draws nothing and counts for nothing."""
    limit = app.state.settings.max_total_samples
    rows = 2000  # with the check: 2 objectives x (100 + 2 x 1000) draws a row, 8.4e6 > the 5e6 limit
    assert rows * 2 * (100 + 2 * app.state.settings.cross_check_samples) > limit >= rows * 2 * 100
    weighted = ["summary.weighted"]  # made of draws, without diagnostics
    body = {"y": [0.1] * rows, "objective": "both", "num_samples": 100, "seed": 3, "include": weighted}
    answer = as_json(client, "gmm", **body)["results"]
    assert len(answer) == rows and set(answer[0]["objectives"]) == {"pq", "qp"}
    refused = raw(client, "gmm", **(body | {"include": [*weighted, "diagnostics"]}))
    assert refused.status_code == 422 and "would draw" in refused.text, refused.text
    one = as_json(client, "gmm", y=0.1, objective="qp", num_samples=100, seed=3, include=weighted)
    assert set(one["versions"]) == {"qp"}  # the other network did not answer
    checked = as_json(client, "gmm", y=0.1, objective="qp", num_samples=100, seed=3, include=[*weighted, "diagnostics"])
    assert set(checked["versions"]) == {"pq", "qp"} and checked["summary"] == one["summary"]


def test_the_arrow_stream_is_bytes_so_the_response_path_never_compares_it_item_by_item():
    """Starlette's IdentityResponder compares a body with itself: instant for bytes, 66 ms for a 16 MB memoryview."""
    from service.arrow import stream

    table = pa.table({"x": pa.array(np.arange(5.0))})
    body = stream(table, {"model": "gmm"})
    assert type(body) is bytes
    assert pa.ipc.open_stream(body).read_all().equals(table)


@pytest.mark.parametrize("rows", [3, 200_000])  # under and over MEASURED_BYTES: one pass, and measured first
def test_the_arrow_stream_is_the_stream_pyarrow_writes(rows):
    """Both ways of writing (one pass for small tables, measured first for large ones) give pyarrow's own stream."""
    from service.arrow import MEASURED_BYTES, stream

    whole = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(rows * 2 * 3.0)), 3),
            "verdict": pa.DictionaryArray.from_arrays(pa.array(np.arange(rows * 2) % 2, pa.int8()), ["a", "b"]),
        }
    )
    table = whole.slice(rows // 2, rows)  # as a query's rows of a micro-batch
    assert (table.get_total_buffer_size() < MEASURED_BYTES) == (rows == 3)
    metadata = {"model": "gmm", "seed": "7"}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table.replace_schema_metadata(metadata))
    body = stream(table, metadata)
    assert body == sink.getvalue().to_pybytes()
    assert pa.ipc.open_stream(body).read_all().equals(table.replace_schema_metadata(metadata))


def test_a_nan_observation_is_named_as_such(client):
    response = client.post(
        "/v1/models/gmm/posterior", content=b'{"y": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "y"] and detail["type"] == "out_of_range" and "NaN" in detail["msg"], detail


def test_zstd_contexts_are_kept_and_never_shared_by_two_answers_at_once():
    """Two streamed answers compressed at once, chunks interleaved, then a third: each decodes to its own bytes.

    The third reuses a kept context (no new one is made), and a context is never
    lent to a second answer while the first is still streaming (python-zstandard
    issue #182: overlapping streams of one context corrupt each other).
    """
    made = []

    class Counted(ZstdContexts):
        def take(self):
            context = super().take()
            made.append(context)
            return context

    contexts = Counted(3)
    rng = np.random.default_rng(5)
    chunks = {name: [rng.integers(0, 4, 50_000, dtype=np.uint8).tobytes() for _ in range(3)] for name in "ab"}

    def streaming(name):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for i, chunk in enumerate(chunks[name]):
                await send({"type": "http.response.body", "body": chunk, "more_body": i < 2})
                await asyncio.sleep(0)  # the other answer's chunk goes next

        return app

    async def run(name):
        sent = []

        async def send(message):
            sent.append(message)

        responder = ZstdResponder(streaming(name), 500, contexts)
        await responder({"type": "http", "method": "GET", "headers": []}, None, send)
        assert dict(sent[0]["headers"])[b"content-encoding"] == b"zstd"
        return b"".join(m.get("body", b"") for m in sent[1:])

    async def both():
        return await asyncio.gather(run("a"), run("b"))

    wire = dict(zip("ab", asyncio.run(both())))
    for name in "ab":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(wire[name]) == b"".join(chunks[name])
    assert len({id(context) for context in made}) == 2  # overlapping answers: a context each
    assert asyncio.run(run("a")) and made[-1] in made[:2] and len(contexts.free) == 2  # the third: a kept one


def test_the_readme_names_each_dictionary_column_of_the_arrow_schema(client):
    """The README's Arrow table said "string" for model, objective and versions, which are dictionary columns (R
    reads them as factors, pandas as Categoricals): each column's row says "dictionary" where the stream has one."""
    body = {"y": [0.5, 1.0], "objective": "both", "num_samples": 5, "seed": 3, "include": ["q", "diagnostics"]}
    stream = client.post("/v1/models/gmm_open/posterior", json=body, headers={"Accept": ARROW}).content
    schema = pa.ipc.open_stream(stream).schema
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = dict(re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (.+) \|$", readme, re.MULTILINE))
    table = {name.strip("` "): text for names, text in rows.items() for name in names.split(",")}

    def dictionary_leaves(kind: pa.DataType) -> list[str]:
        if pa.types.is_dictionary(kind):
            return ["dictionary"]
        if pa.types.is_struct(kind):
            return [leaf for i in range(kind.num_fields) for leaf in dictionary_leaves(kind.field(i).type)]
        return []

    for field in schema:
        said = table[field.name]
        if pa.types.is_dictionary(field.type) or pa.types.is_struct(field.type) and field.name == "versions":
            assert said.startswith(("dictionary", "struct of dictionary")), (field.name, said)
        assert said.count("dictionary") >= len(set(dictionary_leaves(field.type))), (field.name, said)
    diagnostics = table["diagnostics"]
    assert "`verdict`: dictionary" in diagnostics and "`other_objective`: dictionary" in diagnostics
