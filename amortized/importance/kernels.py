"""The per-draw loops of importance sampling, compiled with numba.

An answer touches each of its draws a dozen times: pick the branch, place x,
evaluate the log weight and the mixture's, then sum weights, squares and
moments. In NumPy each step is a pass over all draws with its own temporary
array (about fifty per answer, most of its time); here the steps are fused
into a few loops per row. The exponentials are left to NumPy between the
loops: its SIMD ``exp`` is about seven times faster than a compiled scalar one.

Each loop works row by row in a fixed order, so a row's result does not
depend on the other rows of a batch (micro-batching relies on it). No
fastmath: infinities and NaN propagate as in NumPy, and every sum runs in an
order the code states (the long ones in four lanes, :func:`four_lane_sum`;
:mod:`amortized.compiled`: the options, and the disk cache where the
environment enables it). Kernels compile on first call (about a second; the
service warms them up at start).
"""

from __future__ import annotations

import math

import numpy as np

from amortized.compiled import compiled, finite_or_zero, nan_max


@compiled
def evaluate_draws(
    edges: np.ndarray,
    uniform: np.ndarray,
    noise: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    joint: np.ndarray,
    ratio: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place each draw of a branched normal proposal q and evaluate the log densities the weights need.

    Inputs, per row (an observation and proposal) and branch b:
    ``edges`` (rows, branches - 1): q(b|y)'s CDF at each branch but the last, against which
    ``uniform`` (rows, n) picks the branch; ``noise`` (rows, n): the standard-normal draws;
    ``means``, ``stds`` (rows, branches): q's normal on x in each branch;
    ``joint`` (components, rows, branches, 3): log p(b, x, y) - log q(b, x) as coefficients
    (a, b, c) of a + b eps + c eps^2, one quadratic per prior component (a = -inf outside b);
    ``ratio`` (others, rows, branches, 3), others 0 or 1: log o(b, x) - log q(b, x) for another proposal o.

    Returns ``branch`` and ``x`` (rows, n), the joint's terms (components, rows, n): their log
    sum over components is the log weight; the log ratios (others, rows, n); and, with several
    components, each draw's shift ``(rows, n)`` (:func:`shift_row`, applied to each row
    while it is in cache: the terms come back shifted), else ``(0, 0)``.
    """
    rows, n = noise.shape
    components, num_edges, others = joint.shape[0], edges.shape[1], ratio.shape[0]
    branch = np.empty((rows, n), np.int64)
    x, terms, log_ratio = np.empty((rows, n)), np.empty((components, rows, n)), np.empty((others, rows, n))
    top = np.empty((rows, n) if components > 1 else (0, 0))
    for r in range(rows):  # simple inner loops over the draws, which the compiler vectorises
        if num_edges == 0:  # one branch: every coefficient is the row's, loaded once (the same arithmetic)
            mean, std = means[r, 0], stds[r, 0]
            for j in range(n):
                branch[r, j] = 0
                x[r, j] = mean + std * noise[r, j]
            for c in range(components):
                a, b, q = joint[c, r, 0, 0], joint[c, r, 0, 1], joint[c, r, 0, 2]
                for j in range(n):
                    terms[c, r, j] = a + noise[r, j] * (b + q * noise[r, j])
            for o in range(others):
                a, b, q = ratio[o, r, 0, 0], ratio[o, r, 0, 1], ratio[o, r, 0, 2]
                for j in range(n):
                    log_ratio[o, r, j] = a + noise[r, j] * (b + q * noise[r, j])
        else:
            for j in range(n):
                k = 0
                for e in range(num_edges):
                    k += uniform[r, j] >= edges[r, e]
                branch[r, j] = k
            if num_edges < FEW_BRANCHES:  # a pass per branch, its coefficients loaded once (the same arithmetic)
                for k in range(num_edges + 1):
                    place_branch(r, k, branch, noise, means, stds, joint, ratio, x, terms, log_ratio)
            else:  # each draw looks its branch's coefficients up
                for j in range(n):
                    x[r, j] = means[r, branch[r, j]] + stds[r, branch[r, j]] * noise[r, j]
                for c in range(components):
                    for j in range(n):
                        k, eps = branch[r, j], noise[r, j]
                        terms[c, r, j] = joint[c, r, k, 0] + eps * (joint[c, r, k, 1] + joint[c, r, k, 2] * eps)
                for o in range(others):
                    for j in range(n):
                        k, eps = branch[r, j], noise[r, j]
                        log_ratio[o, r, j] = ratio[o, r, k, 0] + eps * (ratio[o, r, k, 1] + ratio[o, r, k, 2] * eps)
        if components > 1:  # the row is in cache: shift it now
            shift_row(terms, top, r)
    return branch, x, terms, log_ratio, top


FEW_BRANCHES = 8  # up to this many, evaluate_draws places a row's draws in a pass per branch


@compiled
def place_branch(
    r: int,
    k: int,
    branch: np.ndarray,
    noise: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    joint: np.ndarray,
    ratio: np.ndarray,
    x: np.ndarray,
    terms: np.ndarray,
    log_ratio: np.ndarray,
) -> None:
    """:func:`evaluate_draws` for the draws of row ``r`` in branch ``k``: x, the joint's terms, the log ratios.

    The branch's coefficients are loaded once and every draw of the row is
    visited, those of other branches left as they are: the compiler
    vectorises this (a masked store), where looking the coefficients up per
    draw could not be.
    """
    mean, std = means[r, k], stds[r, k]
    for j in range(noise.shape[1]):
        if branch[r, j] == k:
            x[r, j] = mean + std * noise[r, j]
    for c in range(joint.shape[0]):
        a, b, q = joint[c, r, k, 0], joint[c, r, k, 1], joint[c, r, k, 2]
        for j in range(noise.shape[1]):
            if branch[r, j] == k:
                terms[c, r, j] = a + noise[r, j] * (b + q * noise[r, j])
    for o in range(ratio.shape[0]):
        a, b, q = ratio[o, r, k, 0], ratio[o, r, k, 1], ratio[o, r, k, 2]
        for j in range(noise.shape[1]):
            if branch[r, j] == k:
                log_ratio[o, r, j] = a + noise[r, j] * (b + q * noise[r, j])


@compiled
def shift_row(terms: np.ndarray, top: np.ndarray, r: int) -> None:
    """In place, the first step of a log-sum-exp over the leading axis of ``terms`` ``(components, rows, n)``, row r.

    Writes the shift ``top[r]`` ``(n,)``: each draw's largest term (NaN if any
    is), or 0 where that is not finite; subtracts it from every term of the
    row. The same numbers as :func:`amortized.arrays.logsumexp` up to its
    ``exp`` (:func:`evaluate_draws` calls it on each row while it is in cache).
    """
    components, n = terms.shape[0], terms.shape[2]
    for j in range(n):
        largest = terms[0, r, j]
        for c in range(1, components):
            largest = nan_max(terms[c, r, j], largest)
        top[r, j] = finite_or_zero(largest)
    for c in range(components):
        for j in range(n):
            terms[c, r, j] -= top[r, j]


@compiled
def component_sums(exponentials: np.ndarray) -> np.ndarray:
    """The sum over the leading axis ``(components, rows, n) -> (rows, n)``, in order (NumPy's ``sum(0)``)."""
    components, rows, n = exponentials.shape
    total = exponentials[0].copy()
    for c in range(1, components):
        for r in range(rows):
            for j in range(n):
                total[r, j] += exponentials[c, r, j]
    return total


@compiled
def shifted_rows(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``log_weights`` ``(rows, n)``: the shift for a stable sum of exp, and the row less it.

    The shift is the row's largest value, NaN if any is, 0 where that is not
    finite (:func:`amortized.arrays.finite_or_zero` of NumPy's ``max``), in one pass.
    """
    rows, n = log_weights.shape
    shifted, shift = np.empty((rows, n)), np.empty(rows)
    for r in range(rows):
        shift[r] = finite_or_zero(row_max(log_weights[r]))
        for j in range(n):
            shifted[r, j] = log_weights[r, j] - shift[r]
    return shifted, shift


@compiled
def row_max(values: np.ndarray) -> float:
    """The largest of ``values`` (1-D, not empty), NaN if any is NaN: NumPy's ``max``.

    The comparisons and the test for NaN run as two passes without a branch
    per value, which the compiler vectorises: in one pass that carried NaN
    along (:func:`nan_max`) each value waited for the last comparison.
    """
    largest, unordered = values[0], False
    for j in range(1, values.shape[0]):
        largest = values[j] if values[j] > largest else largest
    for j in range(values.shape[0]):
        unordered |= values[j] != values[j]
    return math.nan if unordered else largest


@compiled
def weight_sums(weights: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: sum and sum of squares of ``weights`` (exp of the log weights, shifted), and the mean log weight.

    Then divides ``weights`` by their row's sum, in place: the self-normalised weights.
    """
    rows, n = weights.shape
    total, squares, mean_log = np.empty(rows), np.empty(rows), np.empty(rows)
    terms = np.empty(n)
    for r in range(rows):
        for j in range(n):
            terms[j] = weights[r, j] * weights[r, j]
        s = four_lane_sum(weights[r])
        total[r], squares[r], mean_log[r] = s, four_lane_sum(terms), four_lane_sum(log_weights[r]) / n
        for j in range(n):
            weights[r, j] /= s
    return total, squares, mean_log


LANES = 4  # running sums per reduction: each adds every LANES-th term, and they join in a fixed order (four_lane_sum)


@compiled
def four_lane_sum(terms: np.ndarray) -> float:
    """The sum of ``terms`` (1-D) in four running sums of every fourth term, joined as (s0 + s1) + (s2 + s3).

    One order for every row whatever else is in a batch, and a quarter of the
    wait: a single running sum makes each addition wait for the last (about
    three cycles a term), which was most of the time of the weighted moments.
    """
    n = terms.shape[0]
    whole = n - n % LANES
    s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
    for j in range(0, whole, LANES):
        s0 += terms[j]
        s1 += terms[j + 1]
        s2 += terms[j + 2]
        s3 += terms[j + 3]
    total = (s0 + s1) + (s2 + s3)
    for j in range(whole, n):
        total += terms[j]
    return total


@compiled
def weighted_moments(
    normalised: np.ndarray, x: np.ndarray, branch: np.ndarray, num_branches: int
) -> tuple[np.ndarray, ...]:
    """Per row, self-normalised estimates: the mean and std of x, and the probability of each branch.

    Each is a sum of per-draw terms written to a scratch row, then summed by
    :func:`four_lane_sum`: a branch's probability sums the weights of its
    draws and 0 for the others (the same sum as adding each weight to its
    branch, in another order).
    """
    rows, n = x.shape
    mean, std, probabilities = np.empty(rows), np.empty(rows), np.zeros((rows, num_branches))
    terms = np.empty(n)
    for r in range(rows):
        for j in range(n):
            terms[j] = normalised[r, j] * x[r, j]
        m = four_lane_sum(terms)
        for b in range(num_branches):
            for j in range(n):
                terms[j] = normalised[r, j] if branch[r, j] == b else 0.0
            probabilities[r, b] = four_lane_sum(terms)
        for j in range(n):
            terms[j] = normalised[r, j] * (x[r, j] - m) ** 2
        mean[r], std[r] = m, math.sqrt(four_lane_sum(terms))
    return mean, std, probabilities


@compiled
def mixture_exponents(log_weights: np.ndarray, log_ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`amortized.importance.weighing.mixture_check` exponentiates, in one pass.

    Rows come in pairs (q's draws, o's draws of one observation); with
    d = ``log_ratio`` and u = log w - max(d, 0), returns ``(2, rows, n)``:
    u minus its pair's largest (the shift; 0 if not finite), and -|d|; and
    the shift per pair ``(rows // 2,)``.
    """
    rows, n = log_weights.shape
    exponents, shift = np.empty((2, rows, n)), np.empty(rows // 2)
    for p in range(rows // 2):
        for r in range(2 * p, 2 * p + 2):
            for j in range(n):
                d = log_ratio[r, j]
                exponents[0, r, j] = log_weights[r, j] - (d if d >= 0.0 or math.isnan(d) else 0.0)
                exponents[1, r, j] = -abs(d)
        shift[p] = finite_or_zero(nan_max(row_max(exponents[0, 2 * p]), row_max(exponents[0, 2 * p + 1])))
        for r in range(2 * p, 2 * p + 2):
            for j in range(n):
                exponents[0, r, j] -= shift[p]
    return exponents, shift


@compiled
def mixture_sums(
    bound_weights: np.ndarray,
    tails: np.ndarray,
    log_weights: np.ndarray,
    log_ratio: np.ndarray,
    threshold_offset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair of rows (q's draws, o's draws of one observation).

    The mixture's weight sums, and those past a threshold.

    ``bound_weights`` holds exp(u - shift) and ``tails`` exp(-|d|) (see
    :func:`amortized.importance.weighing.mixture_check` for u, d and the shift), so a
    draw's half mixture weight (over exp(shift)) is ``bound / (1 + tail)``;
    ``log_weights`` is log p - log(own proposal) and ``log_ratio`` d = log(other) - log(own) at
    every draw, so q's log weight is ``log_weights`` on q's rows and ``log_weights - log_ratio``
    on o's. Returns, per pair ``(b,)``, the sum and sum of squares of those half weights, and the
    same sums over the draws whose q weight exceeds ``log(total) + threshold_offset``.
    """
    rows, n = bound_weights.shape
    pairs = rows // 2
    total, squares, past, past_squares = np.empty(pairs), np.empty(pairs), np.empty(pairs), np.empty(pairs)
    half, squared = np.empty((2, n)), np.empty((2, n))  # a pair's half weights and their squares, then their sums
    for p in range(pairs):
        for i in range(2):
            for j in range(n):
                half[i, j] = bound_weights[2 * p + i, j] / (1.0 + tails[2 * p + i, j])
        for i in range(2):
            for j in range(n):
                squared[i, j] = half[i, j] * half[i, j]
        s, s2 = four_lane_sum(half.ravel()), four_lane_sum(squared.ravel())
        threshold = math.log(s) + threshold_offset[p] if s > 0.0 else np.inf
        for i in range(2):  # past the threshold: the same terms, 0 for the other draws, summed in the same order
            for j in range(n):  # (so that where every draw is past it, the share is 1 and its error 0 exactly)
                r = 2 * p + i
                log_q_weight = log_weights[r, j] if i == 0 else log_weights[r, j] - log_ratio[r, j]
                if not log_q_weight > threshold:
                    half[i, j], squared[i, j] = 0.0, 0.0
        total[p], squares[p] = s, s2
        past[p], past_squares[p] = four_lane_sum(half.ravel()), four_lane_sum(squared.ravel())
    return total, squares, past, past_squares


@compiled
def one_minus_outer(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """1 - b_i x_j for every pair, per row: ``(rows, m)`` and ``(rows, n)`` give ``(rows, m, n)`` (PSIS's profile fit).

    One pass; the same numbers as NumPy's outer product and subtraction (one rounding each).
    """
    rows, m = b.shape
    n = x.shape[1]
    out = np.empty((rows, m, n))
    for r in range(rows):
        for i in range(m):
            for j in range(n):
                out[r, i, j] = 1.0 - b[r, i] * x[r, j]
    return out
