"""The compiled draws of the CPU's decode step (numba; called by
:func:`avocado_llm.protect.rows.mark_rows`): the counter-based uniforms, a token at a
quantile of a row's cumulative distribution, and the watermark's rejection sampler, which
draws from the softmax of the biased logits without biasing them.
"""

from __future__ import annotations

import numpy as np

from avocado_llm.protect.jit import compile_fn, njit
from avocado_llm.protect.jit import mix as _mix
from avocado_llm.protect.scheme import MASK31

REJECT_TRIES = 12
"""A watermarked sampled row: proposals from the model's distribution before the exact
fallback, two passes over the row hashing every candidate (a proposal is accepted with
probability ``(1 + (W - 1) G) / W``, ``G`` the green candidates' mass and ``W = e^(delta/T)``:
about 0.52 at G = 0.5, δ = 3, T = 1, so 12 tries leave the fallback to 1 row in 7,000)."""
DRAWS_PER_STEP = 32
"""Uniforms a row may take in one step (``k`` below this): the rejection sampler's tries,
two each, and its exact fallback."""
COUNTER_SALT = 0x2545F491  # keeps the two halves' inputs apart
MAX_REJECTION_BIAS = 18.0
"""A watermarked sampled row is drawn by rejection only while ``delta / T`` is at most this:
the proposals come from the model's own distribution, in which a green candidate up to
``delta + SPREAD × T`` below the top weighs ``e^-(delta/T + SPREAD)`` of it, and a weight under
float64's resolution of the cumulative sum (~1e-16) is lost — yet the bias would multiply it by
``e^(delta/T)``. At 18 the mass lost is under ``V · 1e-16 · e^18 ≈ 1e-3`` of the target's even
for 150k tokens. A colder row is biased first and drawn from the biased distribution (so a
temperature of 0.01 cannot hand out the model's own argmax)."""


def seed_words(seed: int) -> tuple[int, int]:
    """A 62-bit seed as the generator's two 31-bit words."""
    return seed & MASK31, (seed >> 31) & MASK31


def counter_uniform(s0: int, s1: int, step: int, k: int) -> float:
    """``U(seed, step, k)`` of :func:`avocado_llm.serve.sampling.uniforms` on one row: the same
    bits."""
    c = step * DRAWS_PER_STEP + k
    hi = _mix(s0 ^ _mix(c))
    lo = _mix(s1 ^ hi ^ _mix(c ^ COUNTER_SALT))
    return float((hi << 22) + (lo >> 9)) * 2.0**-53


def search_cdf(cdf: np.ndarray, u: float) -> int:
    """The token at quantile ``u`` of a row's cumulative (unnormalised) distribution: the
    first whose cumulative mass exceeds ``u · total`` (``torch.searchsorted(right=True)``)."""
    target = u * cdf[cdf.shape[0] - 1]
    lo, hi = 0, cdf.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if cdf[mid] > target:
            hi = mid
        else:
            lo = mid + 1
    return min(lo, cdf.shape[0] - 1)


def draw_marked(
    row: np.ndarray,
    cdf: np.ndarray,
    cut: float,
    red: float,
    s0: int,
    s1: int,
    step: int,
    seed: int,
    threshold: float,
    token_mix: np.ndarray,
    probs: np.ndarray,
    sure: float,
    reach: float,
) -> int:
    """A token from the row's distribution with its green candidates (logit ≥ ``cut``) weighed
    ``e^(delta/T)`` times the rest — the softmax of the biased logits — by rejection: propose
    from the model's distribution (``cdf``), keep a green candidate, keep any other with
    probability ``red = e^(-delta/T)``. After ``REJECT_TRIES`` proposals, an exact draw over
    the whole row (which keeps the distribution exact: an accepted proposal is distributed as
    the target whichever try it came from).

    ``cut`` NaN: not known yet (the row's top logit was never looked for); then a token whose
    probability (``probs``) is at least ``sure`` is a candidate (within ``reach`` of the top
    whatever the top), and the cut is found — one pass — only for a token below that."""
    for k in range(REJECT_TRIES):
        t = search_cdf(cdf, counter_uniform(s0, s1, step, 2 * k))
        if _mix(seed ^ token_mix[t]) < threshold:
            if not (probs.shape[0] > 0 and probs[t] >= sure):
                if cut != cut:
                    cut = top_logit(row) - reach
                if row[t] < cut:
                    if counter_uniform(s0, s1, step, 2 * k + 1) < red:
                        return t
                    continue
            return t
        if counter_uniform(s0, s1, step, 2 * k + 1) < red:
            return t
    if cut != cut:
        cut = top_logit(row) - reach
    total = 0.0  # the target's mass, green candidates weighing 1 and the rest ``red``
    before = 0.0
    for t in range(cdf.shape[0]):
        p = cdf[t] - before
        before = cdf[t]
        if p > 0:
            green = row[t] >= cut and _mix(seed ^ token_mix[t]) < threshold
            total += p if green else p * red
    if total <= 0:  # no green candidate, red weighs 0 in float64: the model's own draw
        return search_cdf(cdf, counter_uniform(s0, s1, step, 2 * REJECT_TRIES))
    target = counter_uniform(s0, s1, step, 2 * REJECT_TRIES) * total
    acc = 0.0
    before = 0.0
    last = 0
    for t in range(cdf.shape[0]):
        p = cdf[t] - before
        before = cdf[t]
        if p > 0:
            last = t
            green = row[t] >= cut and _mix(seed ^ token_mix[t]) < threshold
            acc += p if green else p * red
            if acc > target:
                return t
    return last


def bias_row(
    row: np.ndarray, cut: float, d: float, seed: int, threshold: float, token_mix: np.ndarray
) -> None:
    """Raise the row's green candidates (logit ≥ ``cut``) by ``d``, in place."""
    for t in range(row.shape[0]):
        if row[t] >= cut and _mix(seed ^ token_mix[t]) < threshold:
            row[t] += d


def top_logit(row: np.ndarray) -> float:
    """The largest logit of a row."""
    top = row[0]
    for i in range(1, row.shape[0]):
        if row[i] > top:
            top = row[i]
    return top


def row_lean(probs: np.ndarray, row: np.ndarray, anchor: float) -> tuple[float, float]:
    """``Σ p_i (anchor - x_i)`` and ``Σ p_i`` over a row: one pass of multiply-adds in float32
    (compiled with fastmath: vectorised)."""
    t = np.float32(anchor)
    lean = np.float32(0.0)
    mass = np.float32(0.0)
    for i in range(probs.shape[0]):
        p = probs[i]
        lean += p * (t - row[i])
        mass += p
    return float(lean), float(mass)


if njit is not None:
    counter_uniform = compile_fn(counter_uniform, inline="always")
    search_cdf = compile_fn(search_cdf)
    top_logit = compile_fn(top_logit)
    draw_marked = compile_fn(draw_marked)
    bias_row = compile_fn(bias_row)
    row_lean = compile_fn(row_lean, fastmath=True)
