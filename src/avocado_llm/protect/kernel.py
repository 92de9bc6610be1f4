"""The watermark step for logits on the CPU as one compiled call per decode step (numba) —
and, in the decode loop, the whole token choice of every row (the CPU's sampler of
:mod:`avocado_llm.serve.sampling`), watermarked or not.

:meth:`WatermarkState.apply <avocado_llm.protect.marking.WatermarkState.apply>` on tensors costs
a few dozen small tensor operations a step, ~4 µs each whatever their size: ~0.2 ms, as much as
6% of a tiny model's decode step. :class:`CompiledState` does the same work in one call — per
row: the top two logits (or top 64), the entropy gate, the keyed hash of the tokens within
reach — adds exactly the same biases (tested bit for bit against the tensor path,
``tests/protect/test_kernel.py``), and hands the sampler each row's argmax from the same pass.
:meth:`CompiledState.choose` goes further: it draws the sampled rows too (a watermarked one by
rejection, ``draws.draw_marked``), so the watermark adds only the work a plain step does not
do. The tensor path stays for logits on a GPU, where the model's step dwarfs it.

The one difference: the gate's entropy is summed in float64 here (in float32 from the
sampler's softmax for a drawn row at temperature 1) and in float32 by
:func:`~avocado_llm.protect.scheme.gate_entropy`, so a row whose entropy lies within float32
rounding (~1e-6 nats) of ``min_entropy`` may fall on the other side of the gate.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from avocado_llm.protect import scheme
from avocado_llm.protect.draws import (
    MAX_REJECTION_BIAS,
    bias_row,
    counter_uniform,
    draw_marked,
    row_lean,
    search_cdf,
    seed_words,
    top_logit,
)
from avocado_llm.protect.jit import compile_fn as _compile
from avocado_llm.protect.jit import mix as _mix
from avocado_llm.protect.jit import njit
from avocado_llm.protect.scheme import (
    FULL_ENTROPY_MAX_VOCAB,
    GATE_TOP,
    SPREAD,
    START,
    Watermark,
    mix_int,
)

log = logging.getLogger(__name__)

EXP_FLOOR = 32.0
"""The gate's entropy leaves out tokens more than this many nats below the top: each would add
under 1e-14 (the tensor path's float32 sum cannot see them either)."""

WINDOW = 12.0
"""The gate's entropy sums exponentials only for tokens this close to the top (and bounds the
rest): e^-12 ≈ 6e-6 each."""
GATE_SLACK = 1e-3
"""A bound decides the gate only when it clears it by this much (float32 sums err ~1e-6)."""

CHUNK = 64
"""Tokens per chunk of :func:`_top_k`'s pass: a chunk whose largest logit does not beat the
heap's smallest is skipped whole (its maximum is one vectorised reduction)."""


def _chunk_max(row: np.ndarray, start: int, end: int) -> float:
    """The largest of ``row[start:end]`` (compiled with fastmath: a vectorised reduction)."""
    m = row[start]
    for i in range(start + 1, end):
        m = max(m, row[i])
    return m


def _top_k(row: np.ndarray, k: int, values: np.ndarray, index: np.ndarray) -> None:
    """The row's ``k`` largest logits and their token ids, as a min-heap (``values[0]`` is the
    smallest kept): one pass in chunks of ``CHUNK`` tokens; a chunk whose maximum does not beat
    the heap's smallest holds no token that would enter it, so it is skipped whole (the same
    heap as one comparison per token: a token enters only when it is larger)."""
    for i in range(k):
        values[i] = row[i]
        index[i] = i
    for i in range(k // 2 - 1, -1, -1):
        _sift(values, index, i, k)
    floor = values[0]
    n = row.shape[0]
    start = k
    while start < n:
        end = min(start + CHUNK, n)
        if _chunk_max(row, start, end) > floor:
            for i in range(start, end):
                v = row[i]
                if v > floor:
                    values[0] = v
                    index[0] = i
                    _sift(values, index, 0, k)
                    floor = values[0]
        start = end


def _top_two(values: np.ndarray) -> tuple[float, float, int]:
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


def _sift(values: np.ndarray, index: np.ndarray, i: int, k: int) -> None:
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


def _entropy(values: np.ndarray, top: float) -> float:
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


def _entropy_bound(margin: float, support: int) -> float:
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


def _gate_open(row: np.ndarray, top: float, gate: float) -> bool:
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
    return _entropy(row, top) >= gate


def _gate_of(
    row: np.ndarray, values: np.ndarray, top: float, second: float, big: bool, gate: float
) -> bool:
    """Whether a row's gate is open (its entropy reaches ``gate``): shut at once when the
    top-two margin bounds the entropy below it; else the top ``GATE_TOP`` logits' entropy
    (``values``, above ``FULL_ENTROPY_MAX_VOCAB`` tokens) or the whole row's."""
    support = min(row.shape[0], GATE_TOP) if big else row.shape[0]
    if _entropy_bound(float(top - second), support) < gate - GATE_SLACK:
        return False  # sure of its top token: the gate stays shut, no need to sum
    if big:
        return _entropy(values, float(top)) >= gate
    return _gate_open(row, float(top), float(gate))


ROW_KEY, ROW_WIDTH, ROW_S0, ROW_S1, ROW_STEP, ROW_CONTEXT = 0, 1, 2, 3, 4, 5
"""Columns of the (B, 5 + h) int64 row state: the mixed key, the row's own h, the two words of
its sampling seed, the tokens it has produced, its context."""
ROW_DELTA, ROW_MIN_ENTROPY, ROW_TEMPERATURE, ROW_GAMMA = 0, 1, 2, 3
"""Columns of the (B, 4) float32 row state."""
_NO_ROW = np.empty(0, dtype=np.float32)


def _kept_first(
    b: int,
    d: float,
    ints: np.ndarray,
    floats: np.ndarray,
    cdf: np.ndarray,
    probs: np.ndarray,
    step: int,
    h: int,
    vocab: int,
    context_mix: np.ndarray,
    token_mix: np.ndarray,
    spread: float,
    picks: np.ndarray,
) -> bool:
    """A watermarked drawn row: writes the model's own draw (the rejection sampler's first
    proposal, the token when the gate is shut) into ``picks`` and says whether the rejection
    sampler would keep it too — a green token surely within reach, or another one kept with
    probability ``e^(-delta/T)`` (its own uniform) — so that the gate need not be looked at
    (about half the rows: the gate's top 64 alone is a pass over the whole row). Uses the
    same uniforms as ``draws.draw_marked``, so the token is the one it would pick."""
    s0, s1 = ints[b, ROW_S0], ints[b, ROW_S1]
    first = search_cdf(cdf[b], counter_uniform(s0, s1, step, 0))
    picks[b] = first
    temperature = float(floats[b, ROW_TEMPERATURE])
    seed = _context_seed(ints, b, h, vocab, context_mix)
    if _mix(seed ^ token_mix[first]) < float(floats[b, ROW_GAMMA]) * 2147483648.0:
        # within reach whatever the top: p ≥ e^(-reach/T) ≥ p_top e^(-reach/T) (Σ p ≤ 1)
        reach = float(d + np.float32(spread) * floats[b, ROW_TEMPERATURE])
        return probs[b, first] >= math.exp(-reach / temperature) * (1.0 + 2e-4)
    return counter_uniform(s0, s1, step, 1) < math.exp(-float(d) / temperature)


def _context_seed(ints: np.ndarray, b: int, h: int, vocab: int, context_mix: np.ndarray) -> int:
    """Row ``b``'s green-list seed: its mixed key mixed with its context (START-padded to the
    batch's h where its own is shorter)."""
    s = ints[b, ROW_KEY]
    for j in range(h):
        c = ints[b, ROW_CONTEXT + j] if j >= h - ints[b, ROW_WIDTH] else START
        s = _mix(s ^ context_mix[j, min(c, vocab)])
    return s


def _mark_rows(
    logits: np.ndarray,  # (B, V) float32, biased in place
    tokens: np.ndarray,  # the tokens sampled since the last step (or empty), one per row of ints
    keep: np.ndarray,  # (B,) int64: the rows of ints still in the batch, when ``compact``
    compact: bool,
    ints: np.ndarray,  # (≥ B, 5 + h) int64: key_mix, width, seed words, step, context
    floats: np.ndarray,  # (≥ B, 4) float32: delta, min_entropy, temperature, gamma
    token_mix: np.ndarray,  # (V,) int64
    context_mix: np.ndarray,  # (h, V + 1) int64
    picks: np.ndarray,  # (B,) int64, written: each row's token
    all_greedy: bool,
    gated: bool,
    spread: float,
    cdf: np.ndarray,  # (B, V) float64 cumulative distributions of the sampled rows, or (0, 0)
    probs: np.ndarray,  # (B, V) float32 the softmax at each row's temperature, with ``cdf``
    write_bias: bool,  # the biased logits are wanted too, not only the picks
    exact: np.ndarray,  # (B,) bool, or empty: rows biased already (``_bias_exact``), cdf too
) -> int:
    """Shift ``tokens`` into the contexts and keep only the rows ``keep`` (when ``compact``:
    rows left the batch); then bias every row's green tokens within reach of its top logit and
    write each row's greedy pick (``argmax`` of the biased logits, the first token on a tie)
    into ``picks``: the sampler needs no pass of its own. Returns the rows biased. The same
    decisions as ``WatermarkState`` on tensors: greedy batches skip rows whose runner-up is
    more than ``delta`` below the top (no argmax can move), gated rows need ``min_entropy``,
    and candidates are the tokens within ``delta + spread × temperature`` (float32 arithmetic,
    as the tensors do it).

    With ``cdf`` (the decode loop's :meth:`CompiledState.choose`), a row of temperature above
    0 is drawn instead: from its ``cdf`` row where it has no watermark or its gate is shut,
    else by ``draws.draw_marked`` (its logits are left unbiased), with its own uniforms; every
    row's step counter advances. A watermarked row at temperature 1 of a vocabulary up to
    ``FULL_ENTROPY_MAX_VOCAB`` takes its gate's entropy from ``probs`` (``draws.row_lean``: one
    vectorised pass, no exponential) and needs no top logit (unless the rejection sampler
    meets a green token too unlikely to be surely within reach). A row marked in ``exact``
    was biased by :func:`_bias_exact` and its ``cdf`` is the biased distribution's (its nucleus
    taken from it): it is drawn from ``cdf`` as it is, like a row without a watermark.

    Without ``write_bias`` (the decode step, no row asking for log-probabilities: only
    ``picks`` is read) a greedy row whose top token is green keeps it as its argmax whatever
    the gate says (the bias would raise it by as much as any other green token), a drawn row
    whose first proposal the rejection sampler would keep keeps it (:func:`_kept_first`), so
    neither looks at its gate, and drawn rows leave their logits unbiased. With it, every row
    whose gate is open has its green candidates biased in place, drawn or not (the
    log-probabilities a plan exposes are the watermarked distribution's).

    One pass per row finds its top two, or, above ``FULL_ENTROPY_MAX_VOCAB`` tokens, keeps its
    top ``GATE_TOP`` (the gate's), which hold every candidate when the last of them is below
    the cut (a greedy row, almost always); otherwise one more pass finds the candidates."""
    batch, vocab = logits.shape
    h = ints.shape[1] - ROW_CONTEXT
    if tokens.shape[0]:
        _shift(ints, tokens)
    if compact:
        _compact(ints, floats, keep)
    big = vocab > FULL_ENTROPY_MAX_VOCAB
    k = min(GATE_TOP, vocab) if big else vocab
    values = np.empty(k if big else 1, dtype=logits.dtype)
    index = np.empty(k if big else 1, dtype=np.int64)
    drawing = cdf.shape[0] > 0
    biased = 0
    for b in range(batch):
        d = floats[b, ROW_DELTA]
        row = logits[b]
        step = ints[b, ROW_STEP]
        ints[b, ROW_STEP] = step + 1
        sampled = drawing and floats[b, ROW_TEMPERATURE] > 0
        if sampled and (d == 0 or (exact.shape[0] > 0 and exact[b])):
            # no watermark (the model's own draw), or biased already: no pass over the logits
            picks[b] = search_cdf(
                cdf[b], counter_uniform(ints[b, ROW_S0], ints[b, ROW_S1], step, 0)
            )
            continue
        if sampled and not write_bias and _kept_first(b, d, ints, floats, cdf, probs, step, h,
                                                      vocab, context_mix, token_mix, spread,
                                                      picks):  # fmt: skip
            continue  # the rejection sampler keeps its first proposal, the gate open or shut
        if sampled and not big and floats[b, ROW_TEMPERATURE] == 1:  # probs: at temperature 1
            # the first proposal is the model's own draw: the token when the gate is shut
            s0, s1 = ints[b, ROW_S0], ints[b, ROW_S1]
            first = search_cdf(cdf[b], counter_uniform(s0, s1, step, 0))
            picks[b] = first
            lean, mass = row_lean(probs[b], row, float(row[first]))
            # H = Σ q_i (x_first - x_i) - log q_first, q = probs / mass: no exponential
            entropy = lean / mass - math.log(probs[b, first] / mass)
            if gated and entropy < floats[b, ROW_MIN_ENTROPY]:
                continue
            reach = d + np.float32(spread)
            sure = mass * math.exp(-float(reach)) * (1.0 + 1e-4)
            threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0
            s = _context_seed(ints, b, h, vocab, context_mix)
            picks[b] = draw_marked(row, cdf[b], np.nan, math.exp(-float(d)), s0, s1, step, s,
                                    threshold, token_mix, probs[b], sure, reach)  # fmt: skip
            if write_bias:
                bias_row(row, top_logit(row) - reach, d, s, threshold, token_mix)
            biased += 1
            continue
        if big:
            _top_k(row, k, values, index)
            top, second, where = _top_two(values)
            pick = index[where]
            for i in range(k):  # argmax's choice on a tie: the first token
                if values[i] == top and index[i] < pick:
                    pick = index[i]
        else:  # the top two in one pass: cheaper than a heap of two
            top, second, pick = _top_two(row)
        picks[b] = pick
        marked = d != 0
        if marked and all_greedy and vocab > 1 and top - second > d:  # (tensors: top-2 needs 2)
            marked = False
        if marked and not write_bias and not sampled:  # a green top token stays the argmax
            s = _context_seed(ints, b, h, vocab, context_mix)
            if _mix(s ^ token_mix[pick]) < float(floats[b, ROW_GAMMA]) * 2147483648.0:
                continue  # (its logits are left unbiased: nobody reads them)
        if marked and gated:
            marked = _gate_of(row, values, top, second, big, floats[b, ROW_MIN_ENTROPY])
        reach = d + np.float32(spread) * floats[b, ROW_TEMPERATURE]
        cut = top - reach
        threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0  # green: hash < gamma · 2^31
        if sampled:
            s0, s1 = ints[b, ROW_S0], ints[b, ROW_S1]
            if marked:
                red = math.exp(-float(d) / float(floats[b, ROW_TEMPERATURE]))
                s = _context_seed(ints, b, h, vocab, context_mix)
                picks[b] = draw_marked(row, cdf[b], cut, red, s0, s1, step, s, threshold,
                                        token_mix, _NO_ROW, 0.0, reach)  # fmt: skip
                if write_bias:
                    bias_row(row, cut, d, s, threshold, token_mix)
                biased += 1
            else:
                picks[b] = search_cdf(cdf[b], counter_uniform(s0, s1, step, 0))
            continue
        if not marked:
            continue
        s = _context_seed(ints, b, h, vocab, context_mix)
        # the pick after the bias is a candidate (the top is one; no other token can reach it)
        best = np.float32(-np.inf)
        if big and values[0] < cut:  # every token at or above the cut is kept
            for i in range(k):
                v = values[i]
                if v >= cut:
                    t = index[i]
                    if _mix(s ^ token_mix[t]) < threshold:
                        v += d
                        row[t] = v
                    if v > best or (v == best and t < pick):
                        best, pick = v, t
        else:
            for t in range(vocab):
                v = row[t]
                if v >= cut:
                    if _mix(s ^ token_mix[t]) < threshold:
                        v += d
                        row[t] = v
                    if v > best:
                        best, pick = v, t
        picks[b] = pick
        biased += 1
    return biased


def _bias_exact(
    logits: np.ndarray,  # (B, V) float32, biased in place
    exact: np.ndarray,  # (B,) bool: the rows to bias
    ints: np.ndarray,  # (≥ B, 5 + h) int64, shifted and compacted already
    floats: np.ndarray,  # (≥ B, 4) float32
    token_mix: np.ndarray,
    context_mix: np.ndarray,
    gated: bool,
    spread: float,
) -> None:
    """Bias the green candidates of the rows ``exact`` in place where their gate is open: the
    biases ``WatermarkState.apply`` gives a sampled row (the tokens within
    ``delta + spread × temperature`` of the top, in float32 arithmetic). For the rows the
    rejection sampler does not serve (:attr:`CompiledState.exact`): the sampler then takes
    their softmax, nucleus and cumulative sum from the biased logits. No step advances."""
    batch, vocab = logits.shape
    h = ints.shape[1] - ROW_CONTEXT
    big = vocab > FULL_ENTROPY_MAX_VOCAB
    k = min(GATE_TOP, vocab) if big else vocab
    values = np.empty(k if big else 1, dtype=logits.dtype)
    index = np.empty(k if big else 1, dtype=np.int64)
    for b in range(batch):
        if not exact[b]:
            continue
        row = logits[b]
        if big:
            _top_k(row, k, values, index)
            top, second, _ = _top_two(values)
        else:
            top, second, _ = _top_two(row)
        if gated and not _gate_of(row, values, top, second, big, floats[b, ROW_MIN_ENTROPY]):
            continue
        d = floats[b, ROW_DELTA]
        reach = d + np.float32(spread) * floats[b, ROW_TEMPERATURE]
        s = _context_seed(ints, b, h, vocab, context_mix)
        threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0
        bias_row(row, top - reach, d, s, threshold, token_mix)


def _shift(ints: np.ndarray, tokens: np.ndarray) -> None:
    """Shift each row's new token into the context columns of ``ints``, in place."""
    width = ints.shape[1]
    for b in range(tokens.shape[0]):
        for j in range(ROW_CONTEXT, width - 1):
            ints[b, j] = ints[b, j + 1]
        ints[b, width - 1] = tokens[b]


def _compact(ints: np.ndarray, floats: np.ndarray, keep: np.ndarray) -> None:
    """Move the rows ``keep`` (in that order) to the front of ``ints`` and ``floats``."""
    n = keep.shape[0]
    kept_ints = np.empty((n, ints.shape[1]), dtype=ints.dtype)
    kept_floats = np.empty((n, floats.shape[1]), dtype=floats.dtype)
    for r in range(n):
        kept_ints[r] = ints[keep[r]]
        kept_floats[r] = floats[keep[r]]
    ints[:n] = kept_ints
    floats[:n] = kept_floats


if njit is not None:
    _shift = _compile(_shift)
    _compact = _compile(_compact)
    _sift = _compile(_sift)
    _chunk_max = _compile(_chunk_max, fastmath=True)
    _top_k = _compile(_top_k)
    _top_two = _compile(_top_two)
    _entropy = _compile(_entropy)
    _entropy_bound = _compile(_entropy_bound)
    _gate_open = _compile(_gate_open)
    _gate_of = _compile(_gate_of)
    _context_seed = _compile(_context_seed)
    _kept_first = _compile(_kept_first)
    # keeps the GIL: the step takes tens of µs (releasing it, nogil=True, measured the same)
    _mark_rows = _compile(_mark_rows)
    _bias_exact = _compile(_bias_exact)


@functools.cache
def available() -> bool:
    """Whether the compiled kernel runs here (compiled, or loaded from numba's cache, on the
    first call: call it at start-up, not in the first request)."""
    if njit is None:
        log.info("numba is not installed: the watermark runs on tensors")
        return False
    state = CompiledState([Watermark(1), None], [0.0, 1.0])
    state.apply(torch.zeros(2, 8))
    state.advance(torch.zeros(2, dtype=torch.long))
    state.select(torch.tensor([1]))
    state.apply(torch.ones(1, 8))
    state.advance(torch.zeros(1, dtype=torch.long))
    state.select(torch.tensor([0]))
    _ = state.context  # the rare path: shift and compact outside a step
    marks = [Watermark(1), None, Watermark(2), Watermark(3)]
    drawn = CompiledState(marks, [1.0, 1.0, 0.0, 0.5], seeds=[1, 2, 3, 4], top_ps=[1, 1, 1, 0.5])
    logits = torch.zeros(4, 8)
    drawn.bias_exact(logits)
    probs = torch.softmax(logits, dim=-1)
    drawn.choose(logits, probs, probs.cumsum(-1, dtype=torch.float64))
    global _mark_rows_entry
    signatures = _mark_rows.signatures  # type: ignore[attr-defined]
    if len(signatures) == 1:
        _mark_rows_entry = _mark_rows.overloads[signatures[0]].entry_point  # type: ignore[attr-defined]
    return True


_mark_rows_entry: Callable[..., Any] | None = None
"""The compiled ``_mark_rows`` for the argument types :class:`CompiledState` always passes
(C-contiguous float32 logits, int64 and float32 state, Python bools): called without numba's
dispatcher, which right after a forward pass (cold caches) costs ~50 µs a call — 2% of the tiny
student's decode step, measured. Only for arguments of exactly those types."""


def row_temperatures(temperatures: Sequence[float]) -> list[float]:
    """Each row's temperature as the decode step sees it: at least 0, and rounded to float32
    (the kernel's row state, the samplers' tensors), so that one too small for float32 (1e-320)
    is 0 — greedy — everywhere, never sampled in one place and greedy in another."""
    return [float(np.float32(max(float(t), 0.0))) for t in temperatures]


_NO_TOKENS = np.empty(0, dtype=np.int64)
_NO_EXACT = np.empty(0, dtype=np.bool_)
_NO_CDF = np.empty((0, 0), dtype=np.float64)
_NO_PROBS = np.empty((0, 0), dtype=np.float32)


class CompiledState:
    """:class:`~avocado_llm.protect.marking.WatermarkState` for logits on the CPU: the same
    interface (``apply``, ``advance``, ``select``, ``context``) and the same biases, with the
    batch's state in two arrays and each step one compiled call (``advance`` and ``select``
    only note the tokens and the rows kept: the next ``apply`` does both), which also leaves
    each row's greedy pick in ``picks`` (the sampler's argmax, done in the same pass).

    :meth:`choose` is the whole decode step of :mod:`avocado_llm.serve.sampling` on the CPU,
    for every batch (rows without a watermark too): each row's token, greedy or drawn with its
    own seed. Every Python-level operation in a decode step counts here: right after the
    model's forward pass the caches are cold, and a call that takes 0.3 µs in a loop takes
    ~20 µs there."""

    def __init__(
        self,
        marks: Sequence[Watermark | None],
        temperatures: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
        top_ps: Sequence[float] | None = None,
    ) -> None:
        self.h = max((m.params.context for m in marks if m is not None), default=1)
        temps = row_temperatures(temperatures or [0.0] * len(marks))
        self.exact = np.array(
            [
                m is not None
                and m.delta != 0
                and t > 0
                and (float(p) < 1 or abs(m.delta) > MAX_REJECTION_BIAS * t)
                for m, t, p in zip(marks, temps, top_ps or [1.0] * len(marks), strict=True)
            ],
            dtype=np.bool_,
        ).reshape(len(marks))
        """Per row: a watermarked sampled row that :meth:`choose` draws from the biased
        distribution as it is, its logits biased first by :meth:`bias_exact` — one with a
        nucleus (``top_p`` < 1: the nucleus is the watermarked distribution's, never the
        model's own, or a tiny ``top_p`` would hand out the unmarked argmax) or too cold for
        the rejection sampler (``delta / T`` above ``draws.MAX_REJECTION_BIAS``)."""
        self.any_exact = bool(self.exact.any())
        self.greedy = bool(all(t == 0 for t in temps))
        self.gated = bool(any(m is not None and m.params.min_entropy > 0 for m in marks))
        # each row's sampling seed (62 bits) as two 31-bit words, then its step counter
        words = [seed_words(s) for s in seeds or [0] * len(marks)]
        head = [
            (mix_int(m.key), m.params.context, *w, 0) if m else (0, 1, *w, 0)
            for m, w in zip(marks, words, strict=True)
        ]
        ints = [[*row, *[START] * self.h] for row in head]
        self.ints = np.array(ints, dtype=np.int64).reshape(len(marks), ROW_CONTEXT + self.h)
        self.floats = np.array(
            [
                (m.delta, m.params.min_entropy, t, m.params.gamma) if m else (0.0, 0.0, t, 0.0)
                for m, t in zip(marks, temps, strict=True)
            ],
            dtype=np.float32,
        ).reshape(len(marks), 4)
        self.rows = len(marks)  # the batch's rows (ints and floats may hold more: see select)
        self._tokens = _NO_TOKENS
        self._keep: np.ndarray | None = None
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        # every step's picks go to the same array (an allocation right after the forward pass
        # costs ~8 µs, a tensor over it ~4 µs), made anew once when rows leave the batch (a
        # pending ``advance`` keeps reading the old one)
        self._picks = np.empty(len(marks), dtype=np.int64)
        self._picks_tensor = torch.from_numpy(self._picks)
        self.picks: torch.Tensor | None = None
        """After ``apply``: each row's argmax of the biased logits, valid until the next
        ``apply`` (which writes the next step's into the same tensor)."""
        self.write_bias = False
        """Whether :meth:`choose` biases the logits in place (somebody reads them: the
        log-probabilities of a plan that exposes them)."""

    def bias_exact(self, logits: torch.Tensor) -> None:
        """Bias the logits (B, V) float32, C-contiguous, in place for the rows :attr:`exact`
        (where their gate is open), before the sampler takes their softmax and nucleus; then
        :meth:`choose` draws those rows from that ``cdf`` as it is."""
        if self._tables is None:
            tables = scheme.hash_tables(logits.shape[-1], self.h, logits.device)
            self._tables = (tables.token_np, tables.context_np)
        self._flush()  # the contexts and rows as of this step
        _bias_exact(logits.numpy(), self.exact, self.ints, self.floats, *self._tables,
                    self.gated, SPREAD)  # fmt: skip

    @property
    def context(self) -> torch.Tensor:
        """(B, h) the previous tokens of each row (START before the answer's first)."""
        self._flush()
        return torch.from_numpy(self.ints[: self.rows, ROW_CONTEXT:].copy())

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Bias ``logits`` (B, V) in place, as ``WatermarkState.apply`` does; returns them.
        ``picks`` is then each row's argmax of the biased logits (the sampler's greedy pick)."""
        logits = logits if logits.is_contiguous() else logits.contiguous()
        self._run(logits, _NO_CDF, _NO_PROBS, True)
        self.picks = self._picks_tensor
        return logits

    def choose(
        self, logits: torch.Tensor, probs: torch.Tensor | None, cdf: torch.Tensor | None
    ) -> torch.Tensor:
        """The decode step: (B,) each row's token — the argmax of its biased logits where its
        temperature is 0, else drawn from ``cdf`` (B, V), the cumulative sum (float64) of its
        distribution at its temperature, zero outside its nucleus (watermarked rows: by
        rejection); ``probs`` (B, V) float32 is that distribution before the nucleus. The
        logits are biased in place where ``write_bias`` (else they may be left unbiased: only
        the tokens are read). The tokens are shifted into the contexts by the next call; the
        tensor returned is rewritten by it."""
        logits = logits if logits.is_contiguous() else logits.contiguous()
        if cdf is None or probs is None:
            self._run(logits, _NO_CDF, _NO_PROBS, self.write_bias)
        else:
            self._run(logits, cdf.numpy(), probs.numpy(), self.write_bias, self.exact)
        self._tokens = self._picks  # the kernel reads them before it writes the next picks
        return self._picks_tensor

    def _run(
        self,
        logits: torch.Tensor,
        cdf: np.ndarray,
        probs: np.ndarray,
        write_bias: bool,
        exact: np.ndarray = _NO_EXACT,
    ) -> None:
        """One compiled call: the pending shift and compaction, then every row's step."""
        if self._tables is None:  # one model, one vocabulary: looked up once
            tables = scheme.hash_tables(logits.shape[-1], self.h, logits.device)
            self._tables = (tables.token_np, tables.context_np)
        if logits.shape[0] != self._picks.shape[0]:  # rows left (or a caller's own batch)
            self._picks = np.empty(logits.shape[0], dtype=np.int64)
            self._picks_tensor = torch.from_numpy(self._picks)
        keep = self._keep
        run = _mark_rows_entry if logits.dtype == torch.float32 else None
        (run or _mark_rows)(logits.numpy(), self._tokens, _NO_TOKENS if keep is None else keep,
                            keep is not None, self.ints, self.floats, *self._tables,
                            self._picks, self.greedy, self.gated, SPREAD, cdf, probs,
                            write_bias, exact)  # fmt: skip
        self._tokens, self._keep = _NO_TOKENS, None

    def advance(self, tokens: torch.Tensor) -> None:
        """Each row's new token (shifted into its context by the next ``apply``)."""
        if self._tokens.shape[0] or self._keep is not None:  # not applied yet: do it now
            self._flush()
        if tokens is self.picks:  # the sampler's answer, in place: the kernel reads it first
            self._tokens = self._picks
        else:
            self._tokens = np.array(tokens.numpy(), dtype=np.int64)  # (a copy: theirs)

    def select(self, index: torch.Tensor) -> None:
        """Keep only these rows (finished rows left the batch): done by the next ``apply``."""
        if self._keep is not None:
            self._flush()
        self._keep = np.ascontiguousarray(index.numpy(), dtype=np.int64)
        self.rows = len(self._keep)
        self.exact = self.exact[self._keep]  # (at once: no part of the kernel's row state)
        self.any_exact = bool(self.exact.any())

    def _flush(self) -> None:
        """What the next ``apply`` would do first, done now."""
        if self._tokens.shape[0]:
            _shift(self.ints, self._tokens)
            self._tokens = _NO_TOKENS
        if self._keep is not None:
            _compact(self.ints, self.floats, self._keep)
            self._keep = None
