"""The compiled PCG64 streams against NumPy's own generators: the same numbers, to the bit, call after call."""

import numpy as np
import pytest
from numba.np.random._constants import ziggurat_nor_r

from amortized.importance import pcg64
from amortized.importance.streams import CompiledStreams, generator_for

SEEDS = [0, 1, 7, 2**32 - 1, 2**32, 2**53 - 1, 2**63 - 1, 2**64 - 1, 123456789012345]


def seed_words(seeds):
    return np.array([np.random.SeedSequence(seed).generate_state(4, np.uint64) for seed in seeds])


def test_seeding_gives_numpys_pcg64_state_and_increment():
    states = pcg64.seeded_states(seed_words(SEEDS))
    for seed, (high, low, increment_high, increment_low) in zip(SEEDS, states.tolist()):
        expected = np.random.default_rng(seed).bit_generator.state["state"]
        assert (high << 64 | low, increment_high << 64 | increment_low) == (expected["state"], expected["inc"]), seed


def test_uniforms_and_normals_are_numpys_draw_for_draw_across_calls():
    """Calls of several shapes, one after another, as the request path makes them (rows per stream 1 to 3)."""
    streams = CompiledStreams(seed_words(SEEDS))
    numpy = [np.random.default_rng(seed) for seed in SEEDS]
    for kind, rows_per_stream, width in [
        ("random", 2, 7),
        ("standard_normal", 2, 1000),
        ("random", 1, 0),
        ("standard_normal", 3, 11),
        ("random", 1, 1),
    ]:
        drawn = getattr(streams, kind)((rows_per_stream * len(SEEDS), width))
        for i, generator in enumerate(numpy):
            expected = getattr(generator, kind)((rows_per_stream, width))
            assert drawn[i * rows_per_stream : (i + 1) * rows_per_stream].tobytes() == expected.tobytes(), (kind, i)


def test_the_ziggurats_rare_branches_give_numpys_numbers():
    """Two million normals per stream: the wedges (an exp test, under 1% of draws) and the tail beyond the base
    layer (|x| > r = 3.654..., drawn by logarithms) are taken hundreds of times, and match NumPy's."""
    seeds = [11, 2**64 - 3]
    drawn = CompiledStreams(seed_words(seeds)).standard_normal((2, 2_000_000))
    for row, seed in zip(drawn, seeds):
        expected = np.random.default_rng(seed).standard_normal(2_000_000)
        assert row.tobytes() == expected.tobytes()
        assert (np.abs(row) > ziggurat_nor_r).sum() > 200  # the tail branch ran
    assert np.random.default_rng(11).random() == CompiledStreams(seed_words([11])).random((1, 1))[0, 0]


def test_rows_must_split_over_the_streams():
    with pytest.raises(ValueError, match="do not split"):
        generator_for([1, 2]).random((3, 4))
