"""The watermark step for logits on a GPU as one Triton kernel per decode step.

On a GPU, :meth:`WatermarkState.apply <avocado_llm.protect.marking.WatermarkState.apply>` costs
about a hundred small kernels a step (the keyed hash alone is ~50 elementwise integer
operations) and three host synchronisations (``nonzero``): ~2 ms a step on an H200 whatever the
batch, measured — 18% of a tiny model's greedy decode step there. :class:`TritonState` does the
same work in one kernel (plus one ``topk`` above ``FULL_ENTROPY_MAX_VOCAB`` tokens, which the
gate needs), one program per row: the top two logits, the entropy gate, the row's seed from its
context, and the keyed hash of the tokens of every block of the row that holds one within reach
of the top, biasing the green ones. It never waits for the GPU. Same decisions as the tensor
path (tested bit for bit in Triton's interpreter on the CPU, ``tests/protect/test_gpu_kernel.py``,
and on CUDA by ``make test-gpu``); the one difference is the order of the entropy's float32
sum, so a row within ~1e-6 nats of ``min_entropy`` may fall on the other side of the gate.

Triton comes with PyTorch's CUDA builds; where it is missing the tensor path runs.
"""

from __future__ import annotations

import functools
import logging

import torch

from avocado_llm.protect import scheme
from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import (
    FULL_ENTROPY_MAX_VOCAB,
    GATE_TOP,
    M1,
    M2,
    M3,
    MASK31,
    SPREAD,
    START,
    Watermark,
)

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch: the tensor path (or the CPU's compiled kernel) runs
    triton = None

BLOCK = 1024
"""Tokens per iteration of a row's pass over a large vocabulary."""

if triton is not None:
    _MASK = tl.constexpr(MASK31)
    _K1, _K2, _K3 = tl.constexpr(M1), tl.constexpr(M2), tl.constexpr(M3)
    _START = tl.constexpr(START)

    @triton.jit
    def _mix(x):  # scheme.mix in Triton (int64, no overflow)
        x = x & _MASK
        x = ((x ^ (x >> 16)) * _K1) & _MASK
        x = ((x ^ (x >> 13)) * _K2) & _MASK
        x = ((x ^ (x >> 16)) * _K3) & _MASK
        return x ^ (x >> 15)

    @triton.jit
    def _entropy(x, top):  # of softmax(x); -inf adds nothing
        d = x - top
        e = tl.exp(d)
        z = tl.sum(e, 0)
        s = tl.sum(tl.where(e > 0, d * e, 0.0), 0)
        return tl.log(z) - s / z

    @triton.jit
    def _mark_rows(
        logits_ptr,  # (B, V) float32, biased in place
        stride,
        top_ptr,  # (B, K) float32: each row's top K logits, descending (BIG only)
        key_ptr,  # (B,) int64: the mixed keys
        width_ptr,  # (B,) int64: each row's own h
        context_ptr,  # (B, H) int64
        token_mix_ptr,  # (V,) int64
        context_mix_ptr,  # (H, V + 1) int64
        delta_ptr,  # (B,) float32, and the three below
        min_entropy_ptr,
        temperature_ptr,
        gamma_ptr,
        spread,
        VOCAB: tl.constexpr,  # one model, one vocabulary: compiled for it
        H: tl.constexpr,
        K: tl.constexpr,
        ROW: tl.constexpr,  # the whole row in one block (not BIG), else BLOCK
        BIG: tl.constexpr,
        ALL_GREEDY: tl.constexpr,
        GATED: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        row = logits_ptr + b * stride
        d = tl.load(delta_ptr + b)
        if BIG:  # the gate's tokens: the top K
            k = tl.arange(0, K)
            values = tl.load(top_ptr + b * K + k)
            top = tl.max(values, 0)
            second = tl.max(tl.where(k == 1, values, float("-inf")), 0)
            support = values
        else:  # the whole row
            offs = tl.arange(0, ROW)
            support = tl.load(row + offs, mask=offs < VOCAB, other=float("-inf"))
            top = tl.max(support, 0)
            n_top = tl.sum((support == top).to(tl.int32), 0)
            below = tl.max(tl.where(support < top, support, float("-inf")), 0)
            second = tl.where(n_top > 1, top, below)  # topk(2)'s runner-up (a tie: the top)
        active = d != 0
        if ALL_GREEDY and VOCAB > 1:  # a runner-up more than delta below: no argmax can move
            active = active & (top - second <= d)
        if GATED:
            active = active & (_entropy(support, top) >= tl.load(min_entropy_ptr + b))
        if active:
            cut = top - (d + spread * tl.load(temperature_ptr + b))
            threshold = tl.load(gamma_ptr + b).to(tl.float64) * 2147483648.0
            width = tl.load(width_ptr + b)
            s = tl.load(key_ptr + b)
            for j in tl.static_range(H):  # the seed of the row's context (START-padded)
                c = tl.where(j >= H - width, tl.load(context_ptr + b * H + j), _START)
                mixed = tl.load(context_mix_ptr + j * (VOCAB + 1) + tl.minimum(c, VOCAB))
                s = _mix(s ^ mixed)
            for start in range(0, VOCAB, ROW):
                offs = start + tl.arange(0, ROW)
                inside = offs < VOCAB
                x = tl.load(row + offs, mask=inside, other=float("-inf"))
                candidate = inside & (x >= cut)  # within reach of the top
                if tl.max(candidate.to(tl.int32), 0) > 0:  # most blocks hold none: no hashing
                    green = _mix(s ^ tl.load(token_mix_ptr + offs, mask=candidate, other=0))
                    hit = candidate & (green.to(tl.float64) < threshold)
                    tl.store(row + offs, x + d, mask=hit)


def available(device: torch.device) -> bool:
    """Whether the Triton kernel runs for logits on ``device`` (a CUDA device with Triton)."""
    return triton is not None and device.type == "cuda" and torch.cuda.is_available()


class TritonState(WatermarkState):
    """:class:`~avocado_llm.protect.marking.WatermarkState` (the same state, ``advance`` and
    ``select``) whose ``apply`` is one kernel launch (two above ``FULL_ENTROPY_MAX_VOCAB``
    tokens) with no host synchronisation. The sampler takes its own argmax (``picks`` stays
    None)."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Bias ``logits`` (B, V) in place, as ``WatermarkState.apply`` does; returns them."""
        batch, vocab = logits.shape
        if batch == 0:
            return logits
        work = logits
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            work = logits.float().contiguous()  # the engine's logits are float32 already
        tables = scheme.hash_tables(vocab, self.h, logits.device)
        big = vocab > FULL_ENTROPY_MAX_VOCAB
        k = min(GATE_TOP, vocab)
        top = work.topk(k, dim=-1).values.contiguous() if big else work
        device = logits.device
        if device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
            with torch.cuda.device(device):  # Triton launches on the current device
                _launch(work, top, self, tables, big, k)
        else:
            _launch(work, top, self, tables, big, k)
        if work is not logits:
            logits.copy_(work)
        return logits


def _launch(
    logits: torch.Tensor,
    top: torch.Tensor,
    state: TritonState,
    tables: scheme.HashTables,
    big: bool,
    k: int,
) -> None:
    vocab = logits.shape[-1]
    row = BLOCK if big else max(16, triton.next_power_of_2(vocab))
    _mark_rows[(logits.shape[0],)](
        logits, logits.stride(0), top,
        state.key_mix, state.width, state.context.contiguous(), tables.token, tables.context,
        state.delta, state.min_entropy, state.temperature, state.gamma, SPREAD,
        VOCAB=vocab, H=state.h, K=k, ROW=row, BIG=big, ALL_GREEDY=state.greedy, GATED=state.gated,
        num_warps=4 if row <= 1024 else 8,
    )  # fmt: skip


@functools.cache
def warm(device: torch.device, vocab: int, h: int = scheme.DEFAULT_PARAMS.context) -> None:
    """Compile (or load from Triton's cache) the kernels a model of ``vocab`` tokens uses —
    greedy and sampled batches, gated or not — at start-up, not in the first request."""
    plain = scheme.WatermarkParams(context=h, min_entropy=0.0)
    marks = [Watermark(1, params=scheme.WatermarkParams(context=h)), Watermark(2, params=plain)]
    logits = torch.zeros(2, vocab, device=device)
    for temperatures in ([0.0, 0.0], [1.0, 0.0]):
        for gated in (marks, [marks[1]] * 2):
            TritonState(gated, device, temperatures).apply(logits.clone())
    log.info("watermark kernel ready for %d tokens on %s", vocab, device)
