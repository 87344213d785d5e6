"""NumPy's PCG64 generator and its ziggurat normal, compiled: the draws of ``np.random.Generator(PCG64(seed))``.

A row of an answer draws from its own PCG64 stream (:mod:`amortized.importance.streams`).
Through NumPy that is a ``Generator`` object per row (about 8 us to make) and a
call per row and kind of draw, each holding the GIL; here every row's state is a
line of one array and a whole batch draws in one compiled call. The numbers are
NumPy's, bit for bit (the tests compare them over millions of draws, the
ziggurat's rare branches included):

- the bit generator is PCG64 (O'Neill 2014, "PCG: a family of simple fast
  space-efficient statistically good algorithms for random number
  generation"): a 128-bit LCG with NumPy's multiplier, the XSL-RR output, and
  NumPy's seeding from four 64-bit words of a ``SeedSequence`` (NumPy's
  ``numpy/random/src/pcg64/pcg64.h``: ``pcg64_set_seed``, ``pcg64_next64``);
- a uniform double is the top 53 bits over 2^53 (``next_double``);
- a standard normal is NumPy's 256-layer ziggurat (Marsaglia & Tsang 2000,
  "The ziggurat method for generating random variables", as
  ``random_standard_normal`` in NumPy's ``distributions.c``), with the tables
  numba keeps for its own ``Generator`` support (``numba.np.random._constants``,
  copied from NumPy's ``ziggurat_constants.h``).

The high half of a 128-bit product is one multiplication in LLVM's IR (a numba
intrinsic: numba has no 128-bit integer type). Should a NumPy release change
its streams, the tests say so; the answers stay reproducible by their seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numba.np.random._constants import fi_double, ki_double, wi_double, ziggurat_nor_inv_r, ziggurat_nor_r

from amortized.compiled import compiled

# PCG64's 128-bit multiplier (NumPy's PCG_DEFAULT_MULTIPLIER_HIGH and _LOW); every constant a uint64, so that
# numba's arithmetic stays in unsigned 64-bit words (mixing in a Python int would make it float64)
MULTIPLIER_HIGH, MULTIPLIER_LOW = np.uint64(2549297995355413924), np.uint64(4865540595714422341)
ZERO, ONE = np.uint64(0), np.uint64(1)
SHIFT8, SHIFT11, SHIFT58, SHIFT63, SHIFT64 = (np.uint64(s) for s in (8, 11, 58, 63, 64))
LAYER, MANTISSA = np.uint64(0xFF), np.uint64(0x000FFFFFFFFFFFFF)
TWO_TO_MINUS_53 = 1.0 / 9007199254740992.0


@intrinsic
def high_product(typingctx: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """The high 64 bits of the 128-bit product of two uint64 words: one 128-bit multiplication in LLVM's IR.

    (numba has no 128-bit integer type; written out in 32-bit halves the step
    took a third longer.)
    """

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


@compiled
def advance(high: np.uint64, low: np.uint64, increment_high: np.uint64, increment_low: np.uint64) -> tuple:
    """The LCG's step: the state ``(high, low)`` times the multiplier plus the increment, modulo 2^128."""
    product_low = low * MULTIPLIER_LOW
    product_high = high_product(low, MULTIPLIER_LOW) + high * MULTIPLIER_LOW + low * MULTIPLIER_HIGH
    low = product_low + increment_low
    return product_high + increment_high + (ONE if low < product_low else ZERO), low


@compiled
def next_word(high: np.uint64, low: np.uint64, increment_high: np.uint64, increment_low: np.uint64) -> tuple:
    """The next 64 random bits and the state after them: step, then XSL-RR of the new state (``pcg64_next64``)."""
    high, low = advance(high, low, increment_high, increment_low)
    folded, rotation = high ^ low, high >> SHIFT58
    return (folded >> rotation) | (folded << ((SHIFT64 - rotation) & SHIFT63)), high, low


@compiled
def next_double(high: np.uint64, low: np.uint64, increment_high: np.uint64, increment_low: np.uint64) -> tuple:
    """A uniform double on [0, 1): the top 53 bits over 2^53 (``next_double``), and the state after it."""
    word, high, low = next_word(high, low, increment_high, increment_low)
    return np.float64(np.int64(word >> SHIFT11)) * TWO_TO_MINUS_53, high, low  # via int64: a faster conversion


@compiled
def next_normal(high: np.uint64, low: np.uint64, increment_high: np.uint64, increment_low: np.uint64) -> tuple:
    """A standard normal, NumPy's ziggurat draw for draw (``random_standard_normal``), and the state after it.

    The layer's rectangle (99.3% of draws) is tested here; the rest is :func:`beyond_rectangle`'s, out of
    line, so that this stays a short straight path the compiler inlines into :func:`fill`'s loop (a draw then
    took 60% of the time it took with the whole algorithm in one function).
    """
    word, high, low = next_word(high, low, increment_high, increment_low)
    layer = word & LAYER
    shifted = word >> SHIFT8
    magnitude = (shifted >> ONE) & MANTISSA
    x = np.float64(np.int64(magnitude)) * wi_double[layer]
    if magnitude < ki_double[layer]:
        return (-x if shifted & ONE else x), high, low  # inside the layer's rectangle
    return beyond_rectangle(word, high, low, increment_high, increment_low)


@compiled
def beyond_rectangle(
    word: np.uint64, high: np.uint64, low: np.uint64, increment_high: np.uint64, increment_low: np.uint64
) -> tuple:
    """The ziggurat's draw from a ``word`` that fell outside its layer's rectangle, and the state after it.

    The base layer's tail, or the wedge under the density; a rejected wedge
    draw starts again from the next word (``random_standard_normal``).
    """
    while True:
        layer = word & LAYER
        word >>= SHIFT8
        magnitude = (word >> ONE) & MANTISSA
        x = np.float64(np.int64(magnitude)) * wi_double[layer]
        if word & ONE:
            x = -x
        if magnitude < ki_double[layer]:
            return x, high, low  # a fresh word, inside its layer's rectangle
        if layer == 0:  # the tail beyond the base layer
            while True:
                u, high, low = next_double(high, low, increment_high, increment_low)
                v, high, low = next_double(high, low, increment_high, increment_low)
                xx, yy = -ziggurat_nor_inv_r * math.log1p(-u), -math.log1p(-v)
                if yy + yy > xx * xx:
                    return (-(ziggurat_nor_r + xx) if (magnitude >> SHIFT8) & ONE else ziggurat_nor_r + xx), high, low
        u, high, low = next_double(high, low, increment_high, increment_low)
        if (fi_double[layer - 1] - fi_double[layer]) * u + fi_double[layer] < math.exp(-0.5 * x * x):
            return x, high, low  # under the density in the layer's wedge
        word, high, low = next_word(high, low, increment_high, increment_low)


@compiled
def seeded_states(words: np.ndarray) -> np.ndarray:
    """PCG64 states ``(rows, 4)`` from each row's four seed words ``(rows, 4)`` uint64, as ``pcg64_set_seed``.

    The words are ``SeedSequence(seed).generate_state(4, np.uint64)``: the first
    two the initial state, the last two the stream (the increment, made odd).
    A state row holds the 128-bit state and increment, high words first.
    """
    rows = words.shape[0]
    states = np.zeros((rows, 4), np.uint64)
    for r in range(rows):
        increment_high = (words[r, 2] << ONE) | (words[r, 3] >> SHIFT63)
        increment_low = (words[r, 3] << ONE) | ONE
        high, low = advance(ZERO, ZERO, increment_high, increment_low)
        added = low + words[r, 1]
        high, low = high + words[r, 0] + (ONE if added < low else ZERO), added
        high, low = advance(high, low, increment_high, increment_low)
        states[r, 0], states[r, 1], states[r, 2], states[r, 3] = high, low, increment_high, increment_low
    return states


@compiled
def fill(states: np.ndarray, out: np.ndarray, normal: bool) -> None:
    """Fill ``out`` ``(streams * k, n)`` with uniforms (or, with ``normal``, standard normals), stream by stream.

    Stream s fills rows s k to (s + 1) k in order, as NumPy's ``Generator.random``
    (``standard_normal``) with ``out=``; each stream's state moves on in
    ``states``. A stream's state is held in locals while it draws (kept in registers, not
    reloaded after every store to ``out``).
    """
    per_stream = out.shape[0] // states.shape[0]
    for s in range(states.shape[0]):
        high, low, increment_high, increment_low = states[s, 0], states[s, 1], states[s, 2], states[s, 3]
        for i in range(s * per_stream, (s + 1) * per_stream):
            for j in range(out.shape[1]):
                if normal:
                    out[i, j], high, low = next_normal(high, low, increment_high, increment_low)
                else:
                    out[i, j], high, low = next_double(high, low, increment_high, increment_low)
        states[s, 0], states[s, 1] = high, low
