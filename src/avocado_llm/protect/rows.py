"""The compiled row kernels of the CPU's watermark step (numba), over the batch's row state
(:class:`avocado_llm.protect.kernel.CompiledState` keeps it in two arrays): :func:`mark_rows`
(one decode step: bias, argmax or draw every row), :func:`bias_exact` (the rows the sampler
draws from the biased distribution as it is), :func:`shift_contexts` and :func:`compact_rows`
(the contexts' new tokens, the rows kept).
"""

from __future__ import annotations

import math

import numpy as np

from avocado_llm.protect.draws import (
    bias_row,
    counter_uniform,
    draw_marked,
    row_lean,
    search_cdf,
    top_logit,
)
from avocado_llm.protect.gate import gate_of, top_k, top_two
from avocado_llm.protect.jit import compile_fn, njit
from avocado_llm.protect.jit import mix as _mix
from avocado_llm.protect.scheme import FULL_ENTROPY_MAX_VOCAB, GATE_TOP, START

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


def _own_draw(ints: np.ndarray, b: int, cdf: np.ndarray, step: int) -> int:
    """Row ``b``'s draw from its ``cdf`` as it is, with its own first uniform (the model's own
    draw, or the biased distribution's where ``bias_exact`` biased the row)."""
    return search_cdf(cdf[b], counter_uniform(ints[b, ROW_S0], ints[b, ROW_S1], step, 0))


def _draw_full_entropy(
    b: int,
    row: np.ndarray,
    d: float,
    step: int,
    ints: np.ndarray,
    floats: np.ndarray,
    cdf: np.ndarray,
    probs: np.ndarray,
    picks: np.ndarray,
    token_mix: np.ndarray,
    context_mix: np.ndarray,
    h: int,
    gated: bool,
    spread: float,
    write_bias: bool,
) -> int:
    """A watermarked row at temperature 1 of a small vocabulary: its gate's entropy from
    ``probs`` (no exponential), then, the gate open, drawn by rejection (no top logit needed
    unless a green token is too unlikely to be surely within reach). Returns 1 if the row was
    marked (its logits biased too, with ``write_bias``), else 0."""
    # the first proposal is the model's own draw: the token when the gate is shut
    s0, s1 = ints[b, ROW_S0], ints[b, ROW_S1]
    first = search_cdf(cdf[b], counter_uniform(s0, s1, step, 0))
    picks[b] = first
    lean, mass = row_lean(probs[b], row, float(row[first]))
    # H = Σ q_i (x_first - x_i) - log q_first, q = probs / mass: no exponential
    entropy = lean / mass - math.log(probs[b, first] / mass)
    if gated and entropy < floats[b, ROW_MIN_ENTROPY]:
        return 0
    reach = d + np.float32(spread)
    sure = mass * math.exp(-float(reach)) * (1.0 + 1e-4)
    threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0
    s = _context_seed(ints, b, h, row.shape[0], context_mix)
    picks[b] = draw_marked(row, cdf[b], np.nan, math.exp(-float(d)), s0, s1, step, s,
                            threshold, token_mix, probs[b], sure, reach)  # fmt: skip
    if write_bias:
        bias_row(row, top_logit(row) - reach, d, s, threshold, token_mix)
    return 1


def _top_pick(
    row: np.ndarray, big: bool, values: np.ndarray, index: np.ndarray
) -> tuple[float, float, int]:
    """The row's top logit, its runner-up and its argmax (the first token on a tie): from its
    top ``GATE_TOP`` kept in ``values`` and ``index`` where ``big`` (the gate's), else in one
    pass (cheaper than a heap of two)."""
    if big:
        k = values.shape[0]
        top_k(row, k, values, index)
        top, second, where = top_two(values)
        pick = index[where]
        for i in range(k):  # argmax's choice on a tie: the first token
            if values[i] == top and index[i] < pick:
                pick = index[i]
        return top, second, pick
    return top_two(row)


def _row_marked(
    b: int,
    row: np.ndarray,
    d: float,
    top: float,
    second: float,
    pick: int,
    values: np.ndarray,
    ints: np.ndarray,
    floats: np.ndarray,
    token_mix: np.ndarray,
    context_mix: np.ndarray,
    h: int,
    big: bool,
    sampled: bool,
    all_greedy: bool,
    gated: bool,
    write_bias: bool,
) -> bool:
    """Whether row ``b`` is marked at this step: it has a watermark; in a greedy batch, its
    runner-up is within ``delta`` of the top (else no bias can move the argmax); a greedy row
    not asked for its biased logits has no green top token (that one stays the argmax: its
    logits are left unbiased, nobody reads them); and its gate, if any, is open."""
    if d == 0:
        return False
    vocab = row.shape[0]
    if all_greedy and vocab > 1 and top - second > d:  # (tensors: top-2 needs 2)
        return False
    if not write_bias and not sampled:  # a green top token stays the argmax
        s = _context_seed(ints, b, h, vocab, context_mix)
        if _mix(s ^ token_mix[pick]) < float(floats[b, ROW_GAMMA]) * 2147483648.0:
            return False
    if gated:
        return gate_of(row, values, top, second, big, floats[b, ROW_MIN_ENTROPY])
    return True


def _bias_greedy_row(
    row: np.ndarray,
    values: np.ndarray,
    index: np.ndarray,
    big: bool,
    pick: int,
    cut: float,
    d: float,
    s: int,
    threshold: float,
    token_mix: np.ndarray,
) -> int:
    """Bias the green tokens at or above ``cut`` in place; returns the argmax after the bias
    (a candidate: the top is one, and no other token can reach it). Only the top ``GATE_TOP``
    are looked at where they hold every candidate (their smallest is below the cut)."""
    best = np.float32(-np.inf)
    if big and values[0] < cut:  # every token at or above the cut is kept
        for i in range(values.shape[0]):
            v = values[i]
            if v >= cut:
                t = index[i]
                if _mix(s ^ token_mix[t]) < threshold:
                    v += d
                    row[t] = v
                if v > best or (v == best and t < pick):
                    best, pick = v, t
    else:
        for t in range(row.shape[0]):
            v = row[t]
            if v >= cut:
                if _mix(s ^ token_mix[t]) < threshold:
                    v += d
                    row[t] = v
                if v > best:
                    best, pick = v, t
    return pick


def _mark_by_top(
    b: int,
    row: np.ndarray,
    d: float,
    step: int,
    sampled: bool,
    ints: np.ndarray,
    floats: np.ndarray,
    cdf: np.ndarray,
    picks: np.ndarray,
    token_mix: np.ndarray,
    context_mix: np.ndarray,
    h: int,
    big: bool,
    values: np.ndarray,
    index: np.ndarray,
    all_greedy: bool,
    gated: bool,
    spread: float,
    write_bias: bool,
) -> int:
    """Row ``b`` by its top logits: its argmax into ``picks``, then, where it is marked, its
    green candidates (within ``delta + spread × temperature`` of the top) biased — drawn by
    rejection if it samples, else the argmax after the bias; a sampled row not marked is
    drawn from its ``cdf``. Returns 1 if the row was marked, else 0."""
    top, second, pick = _top_pick(row, big, values, index)
    picks[b] = pick
    marked = _row_marked(b, row, d, top, second, pick, values, ints, floats, token_mix,
                         context_mix, h, big, sampled, all_greedy, gated, write_bias)  # fmt: skip
    reach = d + np.float32(spread) * floats[b, ROW_TEMPERATURE]
    cut = top - reach
    threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0  # green: hash < gamma · 2^31
    if sampled and not marked:
        picks[b] = _own_draw(ints, b, cdf, step)
        return 0
    if not marked:
        return 0
    s = _context_seed(ints, b, h, row.shape[0], context_mix)
    if sampled:
        s0, s1 = ints[b, ROW_S0], ints[b, ROW_S1]
        red = math.exp(-float(d) / float(floats[b, ROW_TEMPERATURE]))
        picks[b] = draw_marked(row, cdf[b], cut, red, s0, s1, step, s, threshold,
                                token_mix, _NO_ROW, 0.0, reach)  # fmt: skip
        if write_bias:
            bias_row(row, cut, d, s, threshold, token_mix)
        return 1
    picks[b] = _bias_greedy_row(row, values, index, big, pick, cut, d, s, threshold, token_mix)
    return 1


def mark_rows(
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
    exact: np.ndarray,  # (B,) bool, or empty: rows biased already (``bias_exact``), cdf too
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
    was biased by :func:`bias_exact` and its ``cdf`` is the biased distribution's (its nucleus
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
        shift_contexts(ints, tokens)
    if compact:
        compact_rows(ints, floats, keep)
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
            picks[b] = _own_draw(ints, b, cdf, step)
        elif sampled and not write_bias and _kept_first(b, d, ints, floats, cdf, probs, step,
                                                        h, vocab, context_mix, token_mix,
                                                        spread, picks):  # fmt: skip
            pass  # the rejection sampler keeps its first proposal, the gate open or shut
        elif sampled and not big and floats[b, ROW_TEMPERATURE] == 1:  # probs: at temperature 1
            biased += _draw_full_entropy(b, row, d, step, ints, floats, cdf, probs, picks,
                                         token_mix, context_mix, h, gated, spread,
                                         write_bias)  # fmt: skip
        else:
            biased += _mark_by_top(b, row, d, step, sampled, ints, floats, cdf, picks,
                                   token_mix, context_mix, h, big, values, index, all_greedy,
                                   gated, spread, write_bias)  # fmt: skip
    return biased


def bias_exact(
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
            top_k(row, k, values, index)
            top, second, _ = top_two(values)
        else:
            top, second, _ = top_two(row)
        if gated and not gate_of(row, values, top, second, big, floats[b, ROW_MIN_ENTROPY]):
            continue
        d = floats[b, ROW_DELTA]
        reach = d + np.float32(spread) * floats[b, ROW_TEMPERATURE]
        s = _context_seed(ints, b, h, vocab, context_mix)
        threshold = float(floats[b, ROW_GAMMA]) * 2147483648.0
        bias_row(row, top - reach, d, s, threshold, token_mix)


def shift_contexts(ints: np.ndarray, tokens: np.ndarray) -> None:
    """Shift each row's new token into the context columns of ``ints``, in place."""
    width = ints.shape[1]
    for b in range(tokens.shape[0]):
        for j in range(ROW_CONTEXT, width - 1):
            ints[b, j] = ints[b, j + 1]
        ints[b, width - 1] = tokens[b]


def compact_rows(ints: np.ndarray, floats: np.ndarray, keep: np.ndarray) -> None:
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
    shift_contexts = compile_fn(shift_contexts)
    compact_rows = compile_fn(compact_rows)
    _context_seed = compile_fn(_context_seed)
    _kept_first = compile_fn(_kept_first)
    # mark_rows's steps, inlined into it (numba IR), but for the greedy bias loop: a function
    # of its own measured faster. Within ~0.5 µs a step (8 rows) of the one function they were
    _own_draw = compile_fn(_own_draw, inline="always")
    _draw_full_entropy = compile_fn(_draw_full_entropy, inline="always")
    _top_pick = compile_fn(_top_pick, inline="always")
    _row_marked = compile_fn(_row_marked, inline="always")
    _bias_greedy_row = compile_fn(_bias_greedy_row)
    _mark_by_top = compile_fn(_mark_by_top, inline="always")
    # keeps the GIL: the step takes tens of µs (releasing it, nogil=True, measured the same)
    mark_rows = compile_fn(mark_rows)
    bias_exact = compile_fn(bias_exact)
