"""The watermark's scheme on the engine's side, shared by Avocado's in-process engine and the
vLLM logits processor (:mod:`avocado_watermark.vllm`): the keyed green list over the previous
``h`` answer tokens, the hash, the entropy gate. Pure torch, no other dependency; the whole
scheme (why these choices, the detector, the defaults' numbers) is described in
``avocado_llm.protect.scheme`` and docs/protect.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MASK31 = (1 << 31) - 1
START = MASK31  # the context token before an answer's first token (no real token id)
M1, M2, M3 = 0x5BD1E995 & MASK31, 0x27D4EB2F & MASK31, 0x165667B1 & MASK31


@dataclass(frozen=True)
class WatermarkParams:
    """How green lists are drawn; the detector must use the same values as the engine."""

    gamma: float = 0.5
    """Share of the vocabulary that is green at each position."""
    context: int = 2
    """``h``: how many previous answer tokens seed the green list."""
    min_entropy: float = 0.8
    """Bias only positions whose next-token entropy (nats) reaches this; 0: every position.
    0.8 nats: a three-way hesitation opens the gate, a 90/10 one does not.
    A detector with the model and the prompts scores only those positions."""

    def __post_init__(self) -> None:
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), not {self.gamma}")
        if self.context < 1:
            raise ValueError(f"context must be at least 1, not {self.context}")
        if self.min_entropy < 0:
            raise ValueError(f"min_entropy must be at least 0, not {self.min_entropy}")


DEFAULT_PARAMS = WatermarkParams()
DEFAULT_DELTA = 3.0
"""Logit bias of green tokens (``Plan.watermark``'s default too; see docs/protect.md's numbers)."""


@dataclass(frozen=True)
class Watermark:
    """What one request's rows carry into the engine: whose key, how strong."""

    key: int
    """The account's 31-bit key (:func:`account_key`)."""
    delta: float = DEFAULT_DELTA
    """Logit bias added to green tokens."""
    params: WatermarkParams = DEFAULT_PARAMS


def mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer finaliser (murmur-style) on int64 tensors; no overflow, so the engine
    and the detector get the same bits on any device."""
    x = x & MASK31
    x = ((x ^ (x >> 16)) * M1) & MASK31
    x = ((x ^ (x >> 13)) * M2) & MASK31
    x = ((x ^ (x >> 16)) * M3) & MASK31
    return x ^ (x >> 15)


GATE_TOP = 64
"""Vocabularies larger than ``FULL_ENTROPY_MAX_VOCAB``: the gate's entropy is that of the top
``GATE_TOP`` tokens (renormalised): one top-k instead of five passes over every logit."""
FULL_ENTROPY_MAX_VOCAB = 4096


def gate_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) the gate compares with ``min_entropy``, over the last dimension: of
    the whole distribution for a vocabulary up to ``FULL_ENTROPY_MAX_VOCAB`` tokens, of the top
    ``GATE_TOP`` tokens above. Engine, detector and reference test all use this function."""
    if logits.shape[-1] > FULL_ENTROPY_MAX_VOCAB:
        logits = logits.topk(GATE_TOP, dim=-1).values
    return top_entropy(logits)


def top_entropy(values: torch.Tensor) -> torch.Tensor:
    """The entropy of the softmax of ``values`` (all of them), over the last dimension; a token
    of probability 0 (a logit of -inf) adds 0."""
    logp = torch.log_softmax(values.float(), dim=-1)
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(dim=-1)


def mix_int(x: int) -> int:
    """:func:`mix` on one Python int: the same bits (every product stays below 2^62)."""
    x &= MASK31
    x = ((x ^ (x >> 16)) * M1) & MASK31
    x = ((x ^ (x >> 13)) * M2) & MASK31
    x = ((x ^ (x >> 16)) * M3) & MASK31
    return x ^ (x >> 15)


def seeds(keys: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Per-position seeds from keys (N,) and contexts (N, h) of token ids (or START):
    ``s = mix(key); s = mix(s ^ mix(c_j + j + 1))`` for each context column ``j``."""
    s = mix(keys.long())
    for j in range(context.shape[-1]):
        s = mix(s ^ mix(context[..., j].long() + j + 1))
    return s


def uniform(seed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Pseudo-uniform numbers in [0, 1) for (seed, token) pairs (broadcasting):
    ``mix(seed ^ mix(2 t + 1)) / 2^31``."""
    return mix(seed ^ mix(tokens.long() * 2 + 1)).double() / float(1 << 31)


SPREAD = 12.0
"""Sampled rows: tokens more than ``SPREAD × temperature`` nats below the top token (relative
probability under e^-12 ≈ 6e-6) keep their logit unbiased; greedy rows need only the tokens
within ``delta`` of the top (no other can become the argmax), so greedy decoding is exact."""


@functools.cache
def hash_tables(vocab: int, h: int, device: torch.device) -> HashTables:
    """The hash tables of a vocabulary, made once per process (not once per batch)."""
    return HashTables(vocab, h, device)


class HashTables:
    """The hash's per-token parts for one vocabulary, computed once: ``mix(2 t + 1)`` and
    ``mix(c + j + 1)`` for every token (index ``vocab`` stands for START), so a decode step
    only mixes the row seeds and the candidate tokens (the same values as :func:`seeds` and
    :func:`uniform`)."""

    def __init__(self, vocab: int, h: int, device: torch.device) -> None:
        ids = torch.arange(vocab + 1, device=device)
        ids[vocab] = START
        self.vocab = vocab
        self.token = mix(ids[:vocab] * 2 + 1)  # (V,)
        self.context = torch.stack([mix(ids + j + 1) for j in range(h)])  # (h, V + 1)
        if device.type == "cpu":  # the compiled decode step's views (no copies)
            self.token_np, self.context_np = self.token.numpy(), self.context.numpy()

    def seeds(self, key_mix: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        s = key_mix
        idx = context.clamp(max=self.vocab)  # START → the last index
        for j in range(context.shape[-1]):
            s = mix(s ^ self.context[j][idx[:, j]])
        return s

    def seeds_many(self, key_mix: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(K, N) seeds: every one of K mixed keys with every one of N contexts (N, h)."""
        s = key_mix[:, None]
        idx = context.clamp(max=self.vocab)
        for j in range(context.shape[-1]):
            s = mix(s ^ self.context[j][idx[:, j]][None, :])
        return s

    def hashes(self, seed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``uniform(seed, tokens) * 2^31`` as integers."""
        return mix(seed ^ self.token[tokens])


def green_mask(keys: torch.Tensor, context: torch.Tensor, vocab: int, gamma: float) -> torch.Tensor:
    """(B, V) bool: the green tokens of each row, for keys (B,) and contexts (B, h)."""
    vocab_ids = torch.arange(vocab, device=keys.device)
    return uniform(seeds(keys, context)[:, None], vocab_ids[None, :]) < gamma


def is_green(key: int, context: Sequence[int], token: int, params: WatermarkParams) -> bool:
    """Whether one token is green after ``context`` (its ``h`` previous answer tokens)."""
    ctx = torch.tensor([list(context)], dtype=torch.long)
    return bool(uniform(seeds(torch.tensor([key]), ctx), torch.tensor([token]))[0] < params.gamma)


def contexts(ids: Sequence[int], h: int) -> list[tuple[int, ...]]:
    """The context of every position of one answer: its ``h`` previous tokens, START-padded."""
    padded = [START] * h + list(ids)
    return [tuple(padded[i : i + h]) for i in range(len(ids))]
