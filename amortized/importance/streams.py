"""Per-observation random streams: the rule that makes an answer's bytes depend on its seed alone.

Every draw of an answer (the proposal's branch and noise, the cross-check's,
resampling's) is made per observation from that observation's own PCG64
generator, seeded by its row seed, and every step of an answer computes an
observation's row independently of the other rows (sums per row rather than
matrix products, networks run one observation per BLAS call: BLAS may round a
row differently by batch size). So a row's bytes are the same alone, in any
batch request, or in any micro-batch of the service; this module is the one
place that rule is stated (tests/test_batching.py and tests/test_trust.py hold it). Seeds stay below 2**53 so that
JavaScript numbers and jq hold them exactly.
"""

from __future__ import annotations

import secrets

import numpy as np

SEED_BITS = 53  # drawn and derived seeds stay below 2**53: JavaScript numbers and jq hold them exactly


def draw_seed() -> int:
    """A fresh random seed below 2**53, for a request that brings none (echoed so that it can be replayed)."""
    return secrets.randbits(SEED_BITS)


def row_seeds(seed: int, count: int) -> list[int]:
    """A seed per observation of a batch request, derived from the request's by NumPy's ``SeedSequence``.

    Row i's seed is the first 53 bits of ``SeedSequence(seed, spawn_key=(i,))``'s
    state: independent streams per row (spawn keys are NumPy's documented way
    to derive them), and a row is replayed alone as a scalar request with its
    own seed, which every row echoes.
    """
    mask = (1 << SEED_BITS) - 1
    return [
        int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0]) & mask for i in range(count)
    ]


class GroupedGenerator:
    """Stands in for one ``np.random.Generator`` over a batch whose observations come in groups.

    Every draw of shape ``(rows, ...)`` is split by group: each group's own
    generator draws its share of rows (rows per observation x its observations),
    in the same order of calls as when that group is alone.
    """

    def __init__(self, generators: list[np.random.Generator], counts: list[int]) -> None:
        self.generators, self.counts, self.total = generators, counts, sum(counts)

    def _draw(self, method: str, shape: tuple[int, ...]) -> np.ndarray:
        per_observation, remainder = divmod(shape[0], self.total)
        if remainder:
            raise ValueError(f"{shape[0]} rows do not split over {self.total} observations")
        out, start = np.empty(shape), 0
        for generator, count in zip(self.generators, self.counts):  # each fills its own rows, in place
            stop = start + per_observation * count
            getattr(generator, method)(out=out[start:stop])
            start = stop
        return out

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw("random", shape)

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw("standard_normal", shape)


RandomStream = np.random.Generator | GroupedGenerator  # what the request path draws from


def generator_for(seeds: list[int]) -> RandomStream:
    """One PCG64 generator per observation's seed; grouped when there are several.

    Every draw of an answer is made per observation from that observation's own
    stream, so a row's bytes depend on its seed and nothing else: the same alone,
    in any batch request, or in any micro-batch.
    """
    generators = [np.random.default_rng(seed) for seed in seeds]
    return generators[0] if len(generators) == 1 else GroupedGenerator(generators, [1] * len(generators))
