"""The watermark's bias on a batch of logits, on tensors: :class:`TensorMarks` raises each
row's green tokens (its own key, strength, gate and context) — the reference path of Avocado's
in-process engine (whose compiled CPU and GPU kernels are tested bit for bit against it) and the
whole of the vLLM logits processor (:mod:`avocado_watermark.vllm`).

    marks = TensorMarks(watermarks, device, temperatures)
    logits = marks.apply(logits)   # every step, before sampling
    marks.advance(tokens)          # then shift the new tokens into the contexts
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from avocado_watermark.scheme import (
    FULL_ENTROPY_MAX_VOCAB,
    GATE_TOP,
    SPREAD,
    START,
    Watermark,
    gate_entropy,
    hash_tables,
    mix,
    top_entropy,
)

GREEDY_TOP = 8
"""Greedy rows: the tokens looked at per row (those within ``delta`` of the top one, almost
never more; when more, the general path runs)."""


class TensorMarks:
    """The watermark of one batch in the decode loop: a (B,) key, strength, gamma, gate and
    temperature per row and the (B, h) contexts, all tensors; rows without a watermark have
    strength 0.

    ``apply`` is vectorised over the batch: the entropy gate (:func:`gate_entropy`), then the keyed
    hash only for the tokens that could be picked — those within reach of each row's top
    token — so its cost does not grow with the vocabulary beyond a few elementwise passes.
    This is the reference path (and the fallback): Avocado's ``WatermarkState.for_rows`` gives
    the same biases in one compiled call a step on a CPU or a GPU."""

    def __init__(
        self,
        marks: Sequence[Watermark | None],
        device: torch.device,
        temperatures: Sequence[float] | None = None,
    ) -> None:
        self.h = max((m.params.context for m in marks if m is not None), default=1)
        self.keys = torch.tensor([m.key if m else 0 for m in marks], device=device)
        self.delta = torch.tensor([m.delta if m else 0.0 for m in marks], device=device)
        self.gamma = torch.tensor([m.params.gamma if m else 0.0 for m in marks], device=device)
        self.min_entropy = torch.tensor(
            [m.params.min_entropy if m else 0.0 for m in marks], device=device
        )
        temps = temperatures if temperatures is not None else [0.0] * len(marks)
        self.temperature = torch.tensor([max(float(t), 0.0) for t in temps], device=device)
        self.greedy = all(float(t) <= 0 for t in temps)
        widths = [m.params.context if m else 1 for m in marks]
        self.width = torch.tensor(widths, device=device)  # each row's own h
        self.mixed = any(w < self.h for w in widths)
        self.context = torch.full((len(marks), self.h), START, dtype=torch.long, device=device)
        self.gated = any(m is not None and m.params.min_entropy > 0 for m in marks)
        self.key_mix = mix(self.keys.long())
        self.threshold = self.gamma.double() * float(1 << 31)  # green: hash < gamma · 2^31
        self.picks: torch.Tensor | None = None  # the sampler takes its own argmax

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) with each row's green tokens raised by its ``delta`` (where the row's
        entropy reaches its gate). Biases ``logits`` in place and returns them."""
        if self.greedy:
            fast = self._apply_greedy(logits)
            if fast is not None:
                return fast
        bias = self.delta
        if self.gated:
            entropy = gate_entropy(logits)
            bias = torch.where(entropy >= self.min_entropy, bias, torch.zeros_like(bias))
        rows = bias.nonzero().flatten()
        if rows.numel() == 0:  # a confident step: nothing to bias
            return logits
        sub, row_bias = logits[rows], bias[rows]
        reach = row_bias + SPREAD * self.temperature[rows]
        top = sub.max(dim=-1, keepdim=True).values
        r, tok = (sub >= top - reach[:, None]).nonzero(as_tuple=True)  # candidate tokens
        return self._bias(logits, rows, r, tok, row_bias)

    def _bias(
        self,
        logits: torch.Tensor,
        rows: torch.Tensor,
        r: torch.Tensor,
        tok: torch.Tensor,
        row_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Add each candidate's bias (row ``rows[r]``, token ``tok``) when it is green, in
        place: the engine only uses the biased logits (no copy of B × V)."""
        ctx = self.context[rows]
        if self.mixed:  # rows with a shorter h: START-pad the front of their context
            cols = torch.arange(self.h, device=ctx.device)[None, :]
            ctx = torch.where(cols >= self.h - self.width[rows][:, None], ctx, START)
        tables = hash_tables(logits.shape[-1], self.h, logits.device)
        s = tables.seeds(self.key_mix[rows], ctx)
        green = tables.hashes(s[r], tok).double() < self.threshold[rows][r]
        add = (green.to(row_bias.dtype) * row_bias[r]).to(logits.dtype)
        logits.index_put_((rows[r], tok), add, accumulate=True)
        return logits

    def _apply_greedy(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Every row greedy: only the tokens within ``delta`` of a row's top token can become
        its argmax, so look at its top ``GREEDY_TOP`` tokens (all of the row's when more are
        that close), and at its entropy only when its runner-up is within ``delta``: a dozen
        tensor operations a step. None: use the general path (``GREEDY_TOP`` below 2)."""
        vocab = logits.shape[-1]
        k = min(GREEDY_TOP, vocab)
        if k < 2:
            return None
        big = vocab > FULL_ENTROPY_MAX_VOCAB
        if big:  # one top-k serves the margin, the gate and the candidates
            top_values, top_index = logits.topk(GATE_TOP, dim=-1)
            top2 = top_values[:, :2]
        else:
            top2 = logits.topk(2, dim=-1).values  # cheaper than the top k, on every row
        rows = ((top2[:, 0] - top2[:, 1]) <= self.delta).nonzero().flatten()
        if rows.numel() == 0:  # no runner-up within reach: no argmax can move
            return logits
        if self.gated:
            entropy = top_entropy(top_values[rows]) if big else gate_entropy(logits[rows])
            rows = rows[entropy >= self.min_entropy[rows]]
            if rows.numel() == 0:
                return logits
        row_bias = self.delta[rows]
        if big:
            values, index = top_values[rows, :k], top_index[rows, :k]
        else:
            values, index = logits[rows].topk(k, dim=-1)  # (R, k), the top token first
        within = values >= values[:, :1] - row_bias[:, None]
        if bool(within[:, -1].any()):  # more candidates than the top k hold: all of them
            sub = logits[rows]
            top = values[:, :1]
            r, tok = (sub >= top - row_bias[:, None]).nonzero(as_tuple=True)
        else:
            r, c = within.nonzero(as_tuple=True)
            tok = index[r, c]
        return self._bias(logits, rows, r, tok, row_bias)

    def advance(self, tokens: torch.Tensor) -> None:
        """Shift each row's new token into its context."""
        self.context = torch.cat([self.context[:, 1:], tokens[:, None].long()], dim=1)

    def select(self, index: torch.Tensor) -> None:
        """Keep only these rows (finished rows left the batch)."""
        for name in (
            "keys",
            "key_mix",
            "delta",
            "gamma",
            "threshold",
            "min_entropy",
            "temperature",
            "width",
            "context",
        ):
            setattr(self, name, getattr(self, name)[index])
