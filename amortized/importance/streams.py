"""Per-observation random streams: the rule that makes an answer's bytes depend on its seed alone.

Every draw of an answer (the proposal's branch and noise, the cross-check's,
resampling's) is made per observation from that observation's own PCG64
generator, seeded by its row seed, and every step of an answer computes an
observation's row independently of the other rows (sums per row in an order
the code states rather than matrix products; the networks' layers in a
compiled loop per row, not BLAS, which may round a row differently by batch
size). So a row's bytes are the same alone, in any
batch request, or in any micro-batch of the service; this module is the one
place that rule is stated (tests/test_batching.py and tests/test_trust.py hold it). Seeds stay below 2**53 so that
JavaScript numbers and jq hold them exactly.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from amortized.compiled import compiled
from amortized.importance import pcg64

SEED_BITS = 53  # drawn and derived seeds stay below 2**53: JavaScript numbers and jq hold them exactly
# NumPy's SeedSequence (numpy/random/bit_generator.pyx, after O'Neill's seed_seq_fe): a pool of four 32-bit words,
# and the constants of its hash and mix functions
POOL_SIZE = 4
INIT_A, MULT_A = np.uint64(0x43B0D7E5), np.uint64(0x931E8875)
INIT_B, MULT_B = np.uint64(0x8B51F9DD), np.uint64(0x58F38DED)
MIX_MULT_L, MIX_MULT_R = np.uint64(0xCA01F9DD), np.uint64(0x4973F715)
XSHIFT, MASK32 = np.uint64(16), np.uint64(0xFFFFFFFF)


@compiled
def seed_sequence_states(entropy: np.ndarray, words: int) -> np.ndarray:
    """``SeedSequence(...).generate_state(words, np.uint32)`` for each row of ``entropy`` ``(rows, length)``, uint32.

    A row is the assembled entropy of one SeedSequence (the seed's 32-bit
    words, least significant first; with a spawn key, padded with zeros to the
    pool size and followed by the key's words). A row shorter than the pool
    may be padded with zeros: the pool hashes 0 past the end of the entropy,
    so both give the same state. The same hash and mix as NumPy's, word for
    word (32-bit arithmetic in 64-bit words, masked); one compiled call for a
    whole batch instead of a Python object per observation (about 8 us each).
    The tests hold it to ``SeedSequence`` on random seeds and spawn keys.
    """
    rows, length = entropy.shape
    out = np.empty((rows, words), np.uint32)
    pool = np.empty(POOL_SIZE, np.uint64)
    for r in range(rows):
        hash_const = INIT_A
        for i in range(POOL_SIZE):  # each entropy word (0 past the end) hashed into the pool
            value = (np.uint64(entropy[r, i]) if i < length else np.uint64(0)) ^ hash_const
            hash_const = (hash_const * MULT_A) & MASK32
            value = (value * hash_const) & MASK32
            pool[i] = value ^ (value >> XSHIFT)
        # every pool word mixed into every other, then each further entropy word into every pool word
        for source in range(max(length, POOL_SIZE)):
            for target in range(POOL_SIZE):
                if source == target:
                    continue
                value = (pool[source] if source < POOL_SIZE else np.uint64(entropy[r, source])) ^ hash_const
                hash_const = (hash_const * MULT_A) & MASK32
                value = (value * hash_const) & MASK32
                value ^= value >> XSHIFT
                mixed = (MIX_MULT_L * pool[target] - MIX_MULT_R * value) & MASK32
                pool[target] = mixed ^ (mixed >> XSHIFT)
        hash_const = INIT_B
        for i in range(words):
            value = pool[i % POOL_SIZE] ^ hash_const
            hash_const = (hash_const * MULT_B) & MASK32
            value = (value * hash_const) & MASK32
            out[r, i] = value ^ (value >> XSHIFT)
    return out


def seed_words(seeds: list[int], spawn: bool = False) -> np.ndarray:
    """Each seed (below 2**64) as SeedSequence's entropy words ``(rows, 2)``; with ``spawn``, spawn key i on row i.

    With the spawn key, the seed's words are padded to the pool size before
    the key's word (``SeedSequence.get_assembled_entropy``): ``(rows, 5)``.
    """
    values = np.array(seeds, dtype=np.uint64)
    words = np.zeros((len(seeds), POOL_SIZE + 1 if spawn else 2), np.uint32)
    words[:, 0], words[:, 1] = values & MASK32, values >> np.uint64(32)
    if spawn:
        words[:, POOL_SIZE] = np.arange(len(seeds))
    return words


def fast_seeding(seeds: list[int], count: int) -> bool:
    """Whether the compiled seeding serves: every seed a non-negative int below 2**64, spawn keys below 2**32."""
    return count < 2**32 and all(type(seed) is int and 0 <= seed < 2**64 for seed in seeds)


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
    if not fast_seeding([seed], count):
        return [
            int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0]) & mask
            for i in range(count)
        ]
    # the same words, all rows in one compiled call (seed_sequence_states); little-endian pairs as in generate_state
    words = seed_sequence_states(seed_words([seed] * count, spawn=True), 2).astype("<u4")
    return (words.view("<u8")[:, 0].astype(np.uint64) & np.uint64(mask)).tolist()


class CompiledStreams:
    """Stands in for one ``np.random.Generator(PCG64(seed))`` per observation, every row drawn in one compiled call.

    A draw of shape ``(rows, n)`` gives each observation its share of
    consecutive rows (rows / observations), filled in order by its own stream,
    and a stream goes on from one call to the next: the numbers its
    NumPy generator gives, to the bit (:mod:`amortized.importance.pcg64`), without
    a Python object or a call per observation. ``words`` ``(observations, 4)``:
    each seed's ``SeedSequence(seed).generate_state(4, np.uint64)``.
    """

    def __init__(self, words: np.ndarray) -> None:
        self.states = pcg64.seeded_states(np.ascontiguousarray(words, dtype=np.uint64))

    def _draw(self, shape: tuple[int, ...], normal: bool) -> np.ndarray:
        if shape[0] % len(self.states):
            raise ValueError(f"{shape[0]} rows do not split over {len(self.states)} observations")
        out = np.empty(shape)
        pcg64.fill(self.states, out.reshape(shape[0], math.prod(shape[1:])), normal)
        return out

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw(shape, False)

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw(shape, True)


RandomStream = np.random.Generator | CompiledStreams  # what the science draws from (a Generator: one row)


def generator_for(seeds: list[int]) -> CompiledStreams:
    """One PCG64 stream per observation's seed (:class:`CompiledStreams`): ``default_rng(seed)``'s numbers.

    Every draw of an answer is made per observation from that observation's own
    stream, so a row's bytes depend on its seed and nothing else: the same alone,
    in any batch request, or in any micro-batch. The seed words come from the
    compiled SeedSequence (:func:`seed_sequence_states`), or from NumPy's own for
    seeds outside its range (:func:`fast_seeding`; not reachable from the API).
    """
    if fast_seeding(seeds, 0):  # all rows in one compiled call
        return CompiledStreams(seed_sequence_states(seed_words(seeds), 8).astype("<u4").view("<u8"))
    return CompiledStreams(np.array([np.random.SeedSequence(seed).generate_state(4, np.uint64) for seed in seeds]))
