"""Micro-batching: concurrent queries answered together get exactly the answers they would get alone."""

import asyncio
import dataclasses
import struct

import httpx
import numpy as np
import orjson
import pytest

from amortized.importance.streams import SEED_BITS, CompiledStreams, generator_for, row_seeds
from service import answers, arrow
from service.answers import BLOCK_DRAWS, PosteriorQuery, answer, answer_batch, row_blocks
from service.batching import MicroBatcher
from service.main import create_app
from service.registry import Registry
from service.settings import Settings
from tests.conftest import ARTIFACTS

MODELS = ["gaussian", "gmm", "gmm_discrete", "gmm_open"]


@pytest.fixture(scope="module")
def registry():
    return Registry(ARTIFACTS)


def bits(value):
    """``value`` with every float as its exact hex form (so that equality is to the bit: no 0.0 == -0.0)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bits(v) for v in value]
    return value


def as_bytes(results) -> bytes:
    return orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "objective, resample, cross_check",
    [("pq", False, True), ("qp", True, True), ("both", True, True), ("pq", False, False)],
)
def test_a_query_answered_in_a_batch_gets_the_bytes_it_gets_alone(registry, name, objective, resample, cross_check):
    served = registry.models[name]
    for ys in ([[0.3], [-12.0], [0.3], [7.5], [1e4]], [[0.3, -2.0], [5.0, 40.0], [0.0, 0.0]]):
        queries = [
            PosteriorQuery(served, y, objective, 300, seed, resample, cross_check)
            for seed, y in zip([1, 2, 1, 99, 5], ys)
        ]
        together = answer_batch(queries)
        for query, in_batch in zip(queries, together):
            assert as_bytes(in_batch) == as_bytes(answer(query))
        # the Arrow stream too (a slice of the micro-batch's table carried its buffers: the same values, more bytes)
        streams = [dataclasses.replace(query, media="arrow") for query in queries]
        for query, in_batch in zip(streams, answer_batch(streams)):
            assert arrow.stream(in_batch, {}) == arrow.stream(answer(query), {})
        # in the padding of its small buffers a slice carried the other queries' observations (1e4 in the first's)
        first = arrow.stream(answer_batch(streams)[0], {})
        others = {y for query in streams[1:] for y in query.y} - set(streams[0].y) - {0.0}  # 0.0: zero bytes abound
        assert not [y for y in others if struct.pack("<d", y) in first]
    assert as_bytes(together[0]) != as_bytes(together[1])  # different seeds, different draws


@pytest.mark.parametrize("name", MODELS)
def test_networks_run_together_give_the_bytes_each_gives_alone(registry, name):
    """The request path runs a model's pq and qp networks as one stacked NumPy pass (gmm's differ in input gain):
    each gets the bits of its own pass, and the numbers of its torch module (float32 there)."""
    import torch

    served = registry.models[name]
    y = np.array([[0.3, -2.0], [5.0, 40.0], [0.0, 1e4]])
    together = served.forward(["pq", "qp"], y)
    for objective in ("pq", "qp"):
        alone = served.forward([objective], y)[objective]
        with torch.no_grad():
            reference = served.artifacts[objective].network(torch.tensor(y.reshape(-1), dtype=torch.float32))
        for field in ("log_probs", "means", "stds"):
            assert (
                np.ascontiguousarray(getattr(together[objective], field)).tobytes()
                == np.ascontiguousarray(getattr(alone, field)).tobytes()
            )
            expected = getattr(reference, field).double().numpy().reshape(getattr(alone, field).shape)
            np.testing.assert_allclose(getattr(together[objective], field), expected, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(together["pq"].means, together["qp"].means)


def test_a_layer_computes_each_row_alone_as_a_matrix_product_would():
    """The request path's linear layers (affine_rows): every row's bits are the same alone or among others, whatever
    the batch's size, within rounding of NumPy's matrix product, and one item of inputs serves every network."""
    from amortized.networks.branched_mlp import affine_rows

    rng = np.random.default_rng(8)
    inputs, weight, bias = rng.normal(size=(2, 37, 64)), rng.normal(size=(2, 64, 48)), rng.normal(size=(2, 48))
    together = affine_rows(inputs, weight, bias)
    np.testing.assert_allclose(together, inputs @ weight + bias[:, None], rtol=1e-12, atol=1e-12)
    for rows in (slice(0, 1), slice(5, 6), slice(3, 20), slice(36, 37)):
        assert affine_rows(np.ascontiguousarray(inputs[:, rows]), weight, bias).tobytes() == together[:, rows].tobytes()
    shared = affine_rows(inputs[:1], weight, bias)
    assert shared[0].tobytes() == together[0].tobytes()
    np.testing.assert_allclose(shared[1], inputs[0] @ weight[1] + bias[1], rtol=1e-12, atol=1e-12)


def test_a_latent_absent_from_some_branches_is_written_as_orjson_writes_the_list():
    """gmm_open's z (null where k = 1): the samples' compiled JSON text is the bytes orjson gives the Python list of
    ints and None, for one draw, a few and a thousand, and rows all of one branch."""
    served = Registry(ARTIFACTS).models["gmm_open"]
    texts = served.branch_texts["z"]
    values = [branch.get("z") for branch in served.model.branches]
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 1000):
        branch = rng.integers(0, len(values), size=(3, n))
        branch[1] = 0  # every draw in the branch without z
        branch[2] = len(values) - 1
        text, ends = answers.json_lists(branch, *texts)
        for row, end, draws in zip(text, ends, branch):
            assert row[:end].tobytes() == orjson.dumps([values[b] for b in draws])
        x = rng.normal(size=(3, n))
        laid_out = answers.samples_columns(served, branch, x)
        for row, draws, xs in zip(laid_out, branch, x):
            assert orjson.loads(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)) == {
                "x": xs.tolist(),
                "k": [served.model.branches[b]["k"] for b in draws],
                "z": [values[b] for b in draws],
            }


def test_json_lists_writes_texts_of_any_length_as_orjson_does():
    """The compiled list writer packs a comma and a branch's text into 64-bit words: texts that fill a word exactly,
    spill into a second or third, mixed with short ones and null, and rows of no draw, against orjson's bytes."""
    values = [None, 1234567, 12345678, 123456789012345678, -5, 0]  # "1234567" and a comma: exactly one word
    texts = [b"null" if v is None else str(v).encode() for v in values]
    width = max(map(len, texts))
    table = np.array([list(t.ljust(width, b" ")) for t in texts], dtype=np.uint8)
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    rng = np.random.default_rng(11)
    for n in (0, 1, 2, 3, 9, 500):
        branch = rng.integers(0, len(values), size=(4, n))
        if n:
            branch[1] = 2  # every draw a whole word
            branch[2] = 3  # every draw over two words
        text, ends = answers.json_lists(branch, table, lengths)
        for row, end, draws in zip(text, ends, branch):
            assert row[:end].tobytes() == orjson.dumps([values[b] for b in draws])


def fake_query(served, seed: int, samples: int = 10) -> PosteriorQuery:
    return PosteriorQuery(served, [0.0], "pq", samples, seed, False, False)


def test_the_batcher_joins_queries_of_one_turn_and_keys_them(registry):
    calls: list[list[int]] = []

    def answer_seeds(queries):
        calls.append([q.seed for q in queries])
        return [q.seed * 10 for q in queries]

    served = registry.models["gmm"]

    async def scenario():
        batcher = MicroBatcher(answer_seeds, max_size=25)
        same = [batcher.answer(fake_query(served, seed)) for seed in (1, 2)]
        other_key = batcher.answer(fake_query(served, 3, samples=20))
        over_the_limit = batcher.answer(fake_query(served, 4))  # 10 + 10 + 10 > 25: starts a new batch
        results = await asyncio.gather(*same, other_key, over_the_limit)
        alone = await batcher.answer(fake_query(served, 5))
        return results, alone

    results, alone = asyncio.run(scenario())
    assert results == [10, 20, 30, 40] and alone == 50
    assert sorted(calls) == [[1, 2], [3], [4], [5]]


def test_a_failing_batch_fails_every_waiting_query_and_the_next_batch_still_runs(registry):
    served = registry.models["gmm"]
    state = {"fail": True}

    def flaky(queries):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return [q.seed for q in queries]

    async def scenario():
        batcher = MicroBatcher(flaky, max_size=1000)
        first = await asyncio.gather(*(batcher.answer(fake_query(served, s)) for s in (1, 2)), return_exceptions=True)
        second = await asyncio.wait_for(batcher.answer(fake_query(served, 3)), timeout=5)
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) for e in first) and second == 3


@pytest.mark.parametrize(
    "objective, accept", [("both", "application/json"), ("both", arrow.MEDIA_TYPE), ("pq", arrow.MEDIA_TYPE)]
)
def test_concurrent_http_requests_are_batched_and_match_lone_answers(objective, accept):
    """Through the app: 8 requests at once are answered as one batch, byte for byte as when sent alone."""
    app = create_app(Settings(artifacts_dir=ARTIFACTS))
    bodies = [
        {"y": [0.25 * i], "objective": objective, "num_samples": 200, "seed": 40 + i, "resample": True}
        for i in range(8)
    ]
    headers = {"accept": accept}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            path = "/v1/models/gmm_open/posterior"
            together = await asyncio.gather(*(client.post(path, json=b, headers=headers) for b in bodies))
            alone = [await client.post(path, json=b, headers=headers) for b in bodies]
            metrics = (await client.get("/metrics")).text
        return together, alone, metrics

    together, alone, metrics = asyncio.run(scenario())
    assert all(r.status_code == 200 and r.headers["content-type"] == accept for r in together + alone)
    assert [r.content for r in together] == [r.content for r in alone]
    count = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("amortized_batch_queries_count"))
    )
    total = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("amortized_batch_queries_sum"))
    )
    assert (count, total) == (1 + 8, 16.0)  # one batch of 8, then 8 batches of 1


def test_micro_batching_can_be_turned_off_with_the_same_answers():
    body = {"y": 1.5, "objective": "pq", "num_samples": 300, "seed": 3}
    answers = []
    for micro_batch in (True, False):
        app = create_app(Settings(artifacts_dir=ARTIFACTS, micro_batch=micro_batch))
        answers.append(asyncio.run(_post(app, body)))
    assert answers[0] == answers[1]


async def _post(app, body) -> bytes:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/models/gmm_discrete/posterior", json=body)
        assert response.status_code == 200
        return response.content


def test_compiled_seeding_gives_numpys_generators_and_row_seeds():
    """generator_for and row_seeds compute SeedSequence's state in one compiled call: NumPy's streams and seeds."""
    rng = np.random.default_rng(5)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**53 - 1, 2**63 - 1, 2**64 - 1, *rng.integers(0, 2**63, 40).tolist()]
    streams = generator_for(seeds)
    assert isinstance(streams, CompiledStreams)
    uniform, normal = streams.random((2 * len(seeds), 3)), streams.standard_normal((len(seeds), 5))
    for i, seed in enumerate(seeds):  # each row's stream is default_rng(seed)'s, call after call
        numpy = np.random.default_rng(seed)
        assert uniform[2 * i : 2 * i + 2].tobytes() == numpy.random((2, 3)).tobytes(), seed
        assert normal[i].tobytes() == numpy.standard_normal(5).tobytes(), seed
    for seed in seeds[:12]:
        expected = [
            int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0]) & (2**SEED_BITS - 1)
            for i in range(70)
        ]
        assert row_seeds(seed, 70) == expected, seed
    # outside the compiled range (not reachable from the API: seeds are below 2**63), NumPy's own objects
    outside = [2**70, 2**64]
    drawn = generator_for(outside).standard_normal((2, 4))
    assert drawn.tobytes() == np.array([np.random.default_rng(seed).standard_normal(4) for seed in outside]).tobytes()
    assert row_seeds(2**70, 2) == [
        int(np.random.SeedSequence(2**70, spawn_key=(i,)).generate_state(1, np.uint64)[0]) & (2**SEED_BITS - 1)
        for i in range(2)
    ]


def test_row_blocks_cover_the_rows_in_order_in_even_blocks():
    assert row_blocks(10, 1_000_000) == [slice(i, i + 1) for i in range(10)]  # one row over the budget: a block each
    assert row_blocks(62, BLOCK_DRAWS // 62) == [slice(0, 62)]  # within the budget: one piece
    blocks = row_blocks(1000, 2000)  # bench/answer_formats.py's request: 62 rows a block
    assert blocks[0].start == 0 and blocks[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    assert len(blocks) == 17 and {b.stop - b.start for b in blocks} == {58, 59}  # at most 62 each, none short
    # on threads: as many blocks for each (17 on 2 threads kept one a block longer), still covering every row in order
    for rows, row_size, threads, count in [
        (1000, 2000, 2, 18),
        (1000, 2000, 3, 18),
        (1000, 2000, 4, 20),
        (3, 10**6, 2, 3),
    ]:
        blocks = row_blocks(rows, row_size, threads)
        assert len(blocks) == count and [b.start for b in blocks[1:]] == [b.stop for b in blocks[:-1]]
        assert blocks[0].start == 0 and blocks[-1].stop == rows and all(b.stop > b.start for b in blocks)
        assert max(b.stop - b.start for b in blocks) <= max(1, BLOCK_DRAWS // row_size)  # never over the budget
    assert row_blocks(62, BLOCK_DRAWS // 62, 2) == [slice(0, 62)]  # one piece stays one piece


@pytest.mark.parametrize(
    "name, objective, num_samples, resample, media",
    [
        ("gmm", "pq", 1000, False, "arrow"),
        ("gmm_discrete", "both", 300, True, "json"),
        ("gmm_open", "qp", 40, True, "arrow"),
    ],
)
def test_a_big_batch_answered_in_blocks_on_threads_gives_each_row_the_bytes_it_gets_alone(
    registry, monkeypatch, name, objective, num_samples, resample, media
):
    """Blocks of rows on two threads, on one, and the batch in one piece: the same bytes; each row its answer alone."""
    served = registry.models[name]
    ys = np.random.default_rng(8).normal(0.0, 12.0, 150).round(2).tolist()
    big = PosteriorQuery(served, ys, objective, num_samples, 17, resample, True, media=media, compute_threads=2)
    blocks = row_blocks(len(ys), big.row_size)
    assert len(blocks) >= 2  # the case under test
    threaded = answer(big)
    serial = answer(dataclasses.replace(big, compute_threads=1))
    monkeypatch.setattr(answers, "BLOCK_DRAWS", 10**12)
    whole = answer(big)
    layout = (lambda table: arrow.stream(table, {})) if media == "arrow" else as_bytes
    assert layout(threaded) == layout(serial) == layout(whole)
    width = 2 if objective == "both" else 1
    edges = {0, blocks[0].stop - 1, blocks[0].stop, blocks[1].stop, len(ys) - 1}  # block edges and ends
    for i in sorted(edges):  # each row alone, with its own seed: the independent reference
        alone = answer(dataclasses.replace(big, y=[ys[i]], seed=big.row_seeds[i], batch=False, compute_threads=1))
        if media == "arrow":
            assert bits(threaded.slice(i * width, width).to_pylist()) == bits(alone.to_pylist())
        else:
            assert as_bytes(threaded[i]) == as_bytes(alone[0])
