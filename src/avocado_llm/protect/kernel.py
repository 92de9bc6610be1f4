"""The watermark step for logits on the CPU as one compiled call per decode step (numba) —
and, in the decode loop, the whole token choice of every row (the CPU's sampler of
:mod:`avocado_llm.serve.sampling`), watermarked or not.

:meth:`WatermarkState.apply <avocado_llm.protect.marking.WatermarkState.apply>` on tensors costs
a few dozen small tensor operations a step, ~4 µs each whatever their size: ~0.2 ms, as much as
6% of a tiny model's decode step. :class:`CompiledState` does the same work in one call — per
row: the top two logits (or top 64), the entropy gate, the keyed hash of the tokens within
reach — adds exactly the same biases (tested bit for bit against the tensor path,
``tests/protect/test_kernel.py``), and hands the sampler each row's argmax from the same pass.
The compiled functions live in :mod:`~avocado_llm.protect.rows` (the step over the batch's
rows) and :mod:`~avocado_llm.protect.gate` (a row's top logits and its entropy gate).
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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from avocado_llm.protect import scheme
from avocado_llm.protect.draws import MAX_REJECTION_BIAS, seed_words
from avocado_llm.protect.jit import njit
from avocado_llm.protect.rows import (
    ROW_CONTEXT,
    bias_exact,
    compact_rows,
    mark_rows,
    shift_contexts,
)
from avocado_llm.protect.scheme import SPREAD, START, Watermark, mix_int

log = logging.getLogger(__name__)


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
    signatures = mark_rows.signatures  # type: ignore[attr-defined]
    if len(signatures) == 1:
        _mark_rows_entry = mark_rows.overloads[signatures[0]].entry_point  # type: ignore[attr-defined]
    return True


_mark_rows_entry: Callable[..., Any] | None = None
"""The compiled ``mark_rows`` for the argument types :class:`CompiledState` always passes
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
        bias_exact(logits.numpy(), self.exact, self.ints, self.floats, *self._tables,
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
        (run or mark_rows)(logits.numpy(), self._tokens, _NO_TOKENS if keep is None else keep,
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
            shift_contexts(self.ints, self._tokens)
            self._tokens = _NO_TOKENS
        if self._keep is not None:
            compact_rows(self.ints, self.floats, self._keep)
            self._keep = None
