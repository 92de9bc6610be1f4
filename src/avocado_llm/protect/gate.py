"""The entropy gate of the CPU's compiled watermark step (numba; called by
:func:`avocado_llm.protect.rows.mark_rows`): a row's top logits (its top two, or a heap of its
top ``GATE_TOP``) and whether its entropy reaches ``min_entropy`` — bounded from the top-two
margin or from the tokens near the top where that decides it, summed in float64 otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from avocado_llm.protect.jit import compile_fn, njit
from avocado_llm.protect.scheme import GATE_TOP

EXP_FLOOR = 32.0
"""The gate's entropy leaves out tokens more than this many nats below the top: each would add
under 1e-14 (the tensor path's float32 sum cannot see them either)."""

WINDOW = 12.0
"""The gate's entropy sums exponentials only for tokens this close to the top (and bounds the
rest): e^-12 ≈ 6e-6 each."""
GATE_SLACK = 1e-3
"""A bound decides the gate only when it clears it by this much (float32 sums err ~1e-6)."""

CHUNK = 64
"""Tokens per chunk of :func:`top_k`'s pass: a chunk whose largest logit does not beat the
heap's smallest is skipped whole (its maximum is one vectorised reduction)."""


def chunk_max(row: np.ndarray, start: int, end: int) -> float:
    """The largest of ``row[start:end]`` (compiled with fastmath: a vectorised reduction)."""
    m = row[start]
    for i in range(start + 1, end):
        m = max(m, row[i])
    return m


def top_k(row: np.ndarray, k: int, values: np.ndarray, index: np.ndarray) -> None:
    """The row's ``k`` largest logits and their token ids, as a min-heap (``values[0]`` is the
    smallest kept): one pass in chunks of ``CHUNK`` tokens; a chunk whose maximum does not beat
    the heap's smallest holds no token that would enter it, so it is skipped whole (the same
    heap as one comparison per token: a token enters only when it is larger)."""
    for i in range(k):
        values[i] = row[i]
        index[i] = i
    for i in range(k // 2 - 1, -1, -1):
        sift(values, index, i, k)
    floor = values[0]
    n = row.shape[0]
    start = k
    while start < n:
        end = min(start + CHUNK, n)
        if chunk_max(row, start, end) > floor:
            for i in range(start, end):
                v = row[i]
                if v > floor:
                    values[0] = v
                    index[0] = i
                    sift(values, index, 0, k)
                    floor = values[0]
        start = end


def top_two(values: np.ndarray) -> tuple[float, float, int]:
    """The largest value, the runner-up (equal to it on a tie) and where the largest first
    stands (``argmax``'s choice on a tie)."""
    top = values[0]
    second = np.float32(-np.inf)
    where = 0
    for i in range(1, values.shape[0]):
        v = values[i]
        if v > top:
            second = top
            top = v
            where = i
        elif v > second:
            second = v
    return top, second, where


def sift(values: np.ndarray, index: np.ndarray, i: int, k: int) -> None:
    """Restore the min-heap property below ``i`` (the first ``k`` entries are the heap)."""
    while True:
        smallest = i
        left = 2 * i + 1
        right = left + 1
        if left < k and values[left] < values[smallest]:
            smallest = left
        if right < k and values[right] < values[smallest]:
            smallest = right
        if smallest == i:
            return
        values[i], values[smallest] = values[smallest], values[i]
        index[i], index[smallest] = index[smallest], index[i]
        i = smallest


def entropy(values: np.ndarray, top: float) -> float:
    """The entropy (nats) of the softmax of ``values`` (``top`` their largest), in float64."""
    z = 0.0
    s = 0.0
    for v in values:
        d = float(v) - top
        if d < -EXP_FLOOR:  # adds under e^-32 ≈ 1e-14 (a logit of -inf: nothing)
            continue
        e = math.exp(d)
        z += e
        s += d * e
    return math.log(z) - s / z


def entropy_bound(margin: float, support: int) -> float:
    """An upper bound on the entropy of a distribution over ``support`` tokens whose top
    logit is ``margin`` nats above every other: the rest weighs at most
    ``q = ε / (1 + ε)`` with ``ε = (support - 1) e^-margin``, so the entropy is at most
    ``h(q) + q ln(support - 1)`` (grouping; increasing in ``q`` while ``q < 1 - 1/support``).
    A row far above its runner-up closes the gate without summing a single exponential."""
    if support < 2 or margin <= 0:
        return math.inf
    eps = (support - 1) * math.exp(-margin)
    q = eps / (1.0 + eps)
    if q >= 1.0 - 1.0 / support:
        return math.inf
    if q <= 0.0:
        return 0.0
    return -q * math.log(q) - (1.0 - q) * math.log1p(-q) + q * math.log(support - 1)


def gate_open(row: np.ndarray, top: float, gate: float) -> bool:
    """Whether the entropy of the softmax of the whole row reaches ``gate``, summing
    exponentials only for the tokens within ``WINDOW`` nats of the top: the ``n`` others weigh
    ``p ≤ n e^-WINDOW / (z + n e^-WINDOW)`` of the mass, so with ``H_in`` the entropy of the
    near tokens alone, ``(1 - p) H_in ≤ H ≤ h(p) + p ln n + H_in`` (grouping). Only a row
    whose bounds straddle the gate (± ``GATE_SLACK``, far above float32's rounding of the
    tensors' sum) is summed in full."""
    z = 0.0
    s = 0.0
    outside = 0
    for v in row:
        d = float(v) - top
        if d < -WINDOW:
            outside += 1
            continue
        e = math.exp(d)
        z += e
        s += d * e
    inner = math.log(z) - s / z
    if outside == 0:
        return inner >= gate  # every token summed: the full entropy
    tail = outside * math.exp(-WINDOW)
    p = tail / (z + tail)
    if p < 0.5:
        upper = -p * math.log(p) - (1.0 - p) * math.log1p(-p) + p * math.log(outside) + inner
        if upper < gate - GATE_SLACK:
            return False
        if (1.0 - p) * inner >= gate + GATE_SLACK:
            return True
    return entropy(row, top) >= gate


def gate_of(
    row: np.ndarray, values: np.ndarray, top: float, second: float, big: bool, gate: float
) -> bool:
    """Whether a row's gate is open (its entropy reaches ``gate``): shut at once when the
    top-two margin bounds the entropy below it; else the top ``GATE_TOP`` logits' entropy
    (``values``, above ``FULL_ENTROPY_MAX_VOCAB`` tokens) or the whole row's."""
    support = min(row.shape[0], GATE_TOP) if big else row.shape[0]
    if entropy_bound(float(top - second), support) < gate - GATE_SLACK:
        return False  # sure of its top token: the gate stays shut, no need to sum
    if big:
        return entropy(values, float(top)) >= gate
    return gate_open(row, float(top), float(gate))


if njit is not None:
    sift = compile_fn(sift)
    chunk_max = compile_fn(chunk_max, fastmath=True)
    top_k = compile_fn(top_k)
    top_two = compile_fn(top_two)
    entropy = compile_fn(entropy)
    entropy_bound = compile_fn(entropy_bound)
    gate_open = compile_fn(gate_open)
    gate_of = compile_fn(gate_of)
