"""How each row of a decode step picks its token: greedy where the temperature is 0, else
temperature and top-p (nucleus) sampling — with the row's watermark, where it has one.

**The draws.** A sampled row's uniforms come from a counter-based generator,
``U(seed, step, k)``: a hash of the row's 62-bit seed, the number of tokens it has produced
and the draw's index within the step (the watermark's rejection sampler may take several). No
generator state travels with a row, so its tokens depend on its seed and its own logits only
— not on the rows it shares a batch with, their order, or how many draws another row took —
and the tensors (any device) and the compiled CPU kernel get the same bits. One draw is one
``searchsorted`` in the row's cumulative distribution, for every row of the batch at once (a
``torch.multinomial`` per row, with its own ``torch.Generator``, cost ~40 µs a row: over a
millisecond a step for 32 sampled rows of the tiny student; ``bench/sampler_speed.py``).

**top_p** keeps, of the row's distribution at its temperature *after* the watermark's bias,
the most likely tokens whose mass reaches ``top_p`` (the first token always). The nucleus is
the watermarked distribution's, never the model's own: a tiny ``top_p`` is then greedy
decoding of the biased logits — watermarked like temperature 0 — instead of the model's
unmarked argmax (issue #18). No sampling parameter reaches the logits before the bias: the
temperature divides the biased logits, ``seed`` and ``n`` only pick the uniforms.

Two implementations of one decode-step interface (``choose(logits) -> tokens``, then
``select(index)`` when rows leave):

- :class:`~avocado_llm.protect.kernel.CompiledState` on the CPU (numba): the softmax and the
  cumulative sum on tensors, then one compiled call for every row — the greedy argmax, the
  watermark and the draw. A watermarked sampled row is drawn by rejection (propose from the
  model's distribution, accept a red token with probability ``e^(-delta/T)``): the same
  distribution as biasing the logits, at the cost of one or two hashes instead of a hash per
  candidate token. Rejection cannot take a nucleus from the biased distribution, nor see a
  green token the model's float cdf rounds away at a low temperature: a watermarked row with
  ``top_p`` < 1, or with ``delta / T`` above ``draws.MAX_REJECTION_BIAS``, has its logits
  biased first (``CompiledState.bias_exact``), then its softmax, nucleus and draw are the
  biased distribution's, as on tensors.
- :class:`TensorSampler` elsewhere (a GPU, or no numba): the watermark's tensor or Triton
  state biases the logits, then the draw on tensors.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from avocado_llm.protect import kernel
from avocado_llm.protect.draws import COUNTER_SALT, DRAWS_PER_STEP, seed_words
from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import Watermark, mix

if TYPE_CHECKING:
    from avocado_llm.protect.gpu_kernel import TritonState

SEED_BITS = 62


def row_seed(seed: int | None, choice: int) -> int:
    """The seed of one choice of a request: ``seed + choice`` (each choice its own stream),
    modulo 2^62; a random one when the request has none."""
    if seed is None:
        return secrets.randbits(SEED_BITS)
    return (seed + choice) % (1 << SEED_BITS)


def uniforms(s0: np.ndarray, s1: np.ndarray, step: np.ndarray, k: int) -> np.ndarray:
    """``U(seed, step, k)`` in [0, 1) as float64, with 53 random bits, for int64 arrays of
    seed words and steps (broadcasting): ``c = step · 32 + k``, ``hi = mix(s0 ^ mix(c))``,
    ``lo = mix(s1 ^ hi ^ mix(c ^ SALT))`` (31 bits each, the watermark's integer mix). On the
    host, whatever the device: a row's seed and step are known there, and a few dozen
    operations on B numbers cost ~20 µs in numpy but ~30 kernel launches on a GPU."""
    c = step * DRAWS_PER_STEP + k
    hi = mix(s0 ^ mix(c))
    lo = mix(s1 ^ hi ^ mix(c ^ COUNTER_SALT))
    return ((hi << 22) + (lo >> 9)).astype(np.float64) * 2.0**-53


def probabilities(logits: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
    """(B, V) float32: each row's softmax at its temperature (greedy rows: any)."""
    return torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)


def nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``probs`` with each row zero outside its nucleus: the smallest set of most likely tokens
    whose mass reaches ``top_p`` (B,) (unnormalised: the draw scales by the row's total). A row
    of ``top_p`` 1 keeps every token: float32's cumulative sum passes 1 before the tail, which
    would otherwise be cut — by so little mass that it matters only to a watermarked row drawn
    by rejection, whose green tail the bias multiplies, and only when a batch-mate's nucleus
    made the sort run (its tokens would depend on its batch)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cut = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p[:, None]
    sorted_p[cut & (top_p < 1)[:, None]] = 0
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) the token at quantile ``u`` (B,) of each row's (unnormalised) distribution: the
    first whose cumulative mass exceeds ``u · total`` (never a token of probability 0)."""
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    target = (u * cdf[:, -1])[:, None]
    picked = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return picked.clamp(max=probs.shape[-1] - 1)


class Sampler(Protocol):
    """One batch's token choice, step after step."""

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) each row's token from its (B, V) float logits (C-contiguous), biased in place
        by the watermark where the sampler was made with ``biased_logits`` (else they may be
        left unbiased)."""
        ...

    def select(self, index: torch.Tensor) -> None:
        """Keep only these rows (finished rows left the batch)."""
        ...


class TensorSampler:
    """The decode step on tensors (a GPU, or a CPU without numba): the watermark state (the
    device's compiled one where it runs) biases the logits, then every sampled row draws its
    token at once."""

    def __init__(
        self,
        marks: Sequence[Watermark | None],
        temperatures: Sequence[float],
        top_ps: Sequence[float],
        seeds: Sequence[int],
        device: torch.device,
        compiled: bool | None = None,
    ) -> None:
        temps = kernel.row_temperatures(temperatures)
        self.temps = torch.tensor(temps, device=device)
        self.top_p = torch.tensor([float(p) for p in top_ps], device=device)
        words = [seed_words(s) for s in seeds]
        self.s0 = np.array([w[0] for w in words], dtype=np.int64)  # on the host (uniforms)
        self.s1 = np.array([w[1] for w in words], dtype=np.int64)
        self.step = np.zeros(len(temps), dtype=np.int64)
        self.any_sampled = any(t > 0 for t in temps)
        self.all_sampled = all(t > 0 for t in temps)  # (stays so as rows leave)
        self.nucleus = any(t > 0 and p < 1 for t, p in zip(temps, top_ps, strict=True))
        self.marks: WatermarkState | kernel.CompiledState | TritonState | None = (
            WatermarkState.for_rows(marks, device, temps, compiled)
        )

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        marks = self.marks
        if marks is not None:
            logits = marks.apply(logits)
        tokens = marks.picks if marks is not None and marks.picks is not None else None
        if tokens is None and not self.all_sampled:
            tokens = logits.argmax(dim=-1)
        if self.any_sampled:
            biased = probabilities(logits, self.temps)
            if self.nucleus:  # the nucleus of the watermarked distribution (never the model's)
                biased = nucleus(biased, self.top_p)
            u = torch.from_numpy(uniforms(self.s0, self.s1, self.step, 0))
            drawn = draw(biased, u.to(logits.device, non_blocking=True))
            tokens = drawn if tokens is None else torch.where(self.temps > 0, drawn, tokens)
        assert tokens is not None
        if marks is not None:
            marks.advance(tokens)
        self.step += 1
        return tokens

    def select(self, index: torch.Tensor) -> None:
        self.temps, self.top_p = self.temps[index], self.top_p[index]
        rows = index.cpu().numpy()
        self.s0, self.s1, self.step = self.s0[rows], self.s1[rows], self.step[rows]
        if self.marks is not None:
            self.marks.select(index)


class CompiledSampler:
    """The decode step on the CPU: the softmax and its cumulative sum on tensors (only when a
    row samples), then one compiled call for every row (:meth:`CompiledState.choose
    <avocado_llm.protect.kernel.CompiledState.choose>`); rows that need their nucleus (or a
    low temperature) from the biased logits are biased by one compiled call before."""

    def __init__(
        self,
        marks: Sequence[Watermark | None],
        temperatures: Sequence[float],
        top_ps: Sequence[float],
        seeds: Sequence[int],
        biased_logits: bool = False,
    ) -> None:
        temps = kernel.row_temperatures(temperatures)
        self.state = kernel.CompiledState(marks, temps, seeds, top_ps)
        self.state.write_bias = biased_logits
        self.temps = torch.tensor(temps)
        self.top_p = torch.tensor([float(p) for p in top_ps])
        self._refresh()

    def _refresh(self) -> None:
        sampled = self.temps > 0
        self.any_sampled = bool(sampled.any())
        self.nucleus = bool((sampled & (self.top_p < 1)).any())

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.any_sampled:
            return self.state.choose(logits, None, None)
        logits = logits if logits.is_contiguous() else logits.contiguous()
        if self.state.any_exact:  # their softmax and nucleus: the watermarked distribution's
            self.state.bias_exact(logits)
        probs = probabilities(logits, self.temps)
        kept = nucleus(probs, self.top_p) if self.nucleus else probs
        return self.state.choose(logits, probs, kept.cumsum(dim=-1, dtype=torch.float64))

    def select(self, index: torch.Tensor) -> None:
        self.state.select(index)
        self.temps, self.top_p = self.temps[index], self.top_p[index]
        self._refresh()


def sampler_for(
    marks: Sequence[Watermark | None],
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    seeds: Sequence[int],
    device: torch.device,
    compiled: bool | None = None,
    biased_logits: bool = False,
) -> Sampler:
    """The batch's sampler: the compiled kernel on a CPU where numba runs, else tensors
    (``compiled`` True or False asks for one of them). ``biased_logits``: each step leaves the
    watermark's biases in the logits (the tensors always do), for log-probabilities."""
    if device.type == "cpu" and (kernel.available() if compiled is None else compiled):
        return CompiledSampler(marks, temperatures, top_ps, seeds, biased_logits)
    return TensorSampler(marks, temperatures, top_ps, seeds, device, compiled)
