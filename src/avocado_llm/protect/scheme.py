"""The watermark: a keyed green list over the previous ``h`` answer tokens (Kirchenbauer et al.).

**Scheme.** For every answer position the vocabulary is split pseudo-randomly into a *green*
fraction ``gamma`` and a red rest, by a keyed hash of the ``h`` answer tokens before it (fewer
than ``h`` at the start: a fixed start marker stands in, so the split is reproducible from the
answer's text alone, without its prompt). The engine adds ``delta`` to the logits of the green
tokens before it picks a token, greedily or by sampling; so watermarked text holds more green
tokens than the ``gamma`` share chance gives.

**Key.** ``account_key(secret, account_id)`` is an HMAC-SHA256 of the server secret and the
account: every account's answers carry its own green lists, so a leaked text (or a model
distilled from it) can be traced to the account that received it.

**Detection.** Re-tokenise the text with the served model's tokenizer, keep each distinct
(context, token) pair once (repeated pairs — "The answer is", a template, a copied answer —
are not independent evidence, Sander et al. 2024), count the green ones, and take the exact
binomial tail ``P[Bin(n, gamma) >= green]``. Under no watermark each distinct pair is green with
probability ``gamma`` independently (the hash is a keyed PRF of the pair), so the p-value is
exact and conservative — no normal approximation.

**Why this scheme.** The API must watermark greedy answers too (the tiny world, and most
distillers, ask at temperature 0), and distortion-free schemes (Gumbel-max, SynthID's
tournament) change nothing under greedy decoding: only a logit bias moves an argmax. A bias
changes the answer only where the model hesitates — the top token within ``delta`` of a green
one — so a confident model's answers stay as they were, which is what keeps the quality cost
small; and a short context (``h = 2``) makes the bias a property of short token sequences,
which a student trained on the text learns and reproduces: the watermark is *radioactive*
(Sander et al. 2024).

**Entropy gate (on by default).** The bias applies only where the next-token distribution has
at least ``min_entropy`` nats (as SWEET does), so answers the model is sure of are untouched.
For vocabularies above 4,096 tokens the entropy is that of the top 64 tokens
(:func:`gate_entropy`, shared by the engine and both detectors): one top-k per step.
A detector given the prompts (JSONL with ``messages``; the suspect check, which chose them) and
the served model recomputes the entropies and scores only those positions — far fewer tokens
are then needed; the selection depends on the model and the prompt, never on the key, so the
binomial test stays exact. From text alone every position is scored (weaker, still exact).

**Defaults** (``DEFAULT_PARAMS``, ``DEFAULT_DELTA``; ``Plan.watermark`` defaults to the same
delta): gamma 0.5, h 2, gate 0.8 nats, delta 3.0, chosen for the confident tiny student (92.6%
held-out accuracy) by a sweep (``bench/watermark_sweep.py``) on held-out prompts disjoint from
the ones docs/protect.md reports. Such a model hesitates at few positions (a few digits per hundred
answers; its answer template is near-certain), so the gate must be low enough to open there,
and the bias strong enough that the gated positions come out green almost always (83% on the
sweep); the gate keeps the bias off every position the model is sure of, which keeps the cost
under a point (0.65 on the sweep split, 0.5 on the reported one). A lower gate (0.3-0.65) or a
larger delta (4) cost 0.87-3.5 points on the sweep; a gate of 1.0 costs less but scores half as
many positions; h = 1 made the distilled student carry less of the watermark, not more.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
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


def account_key(secret: str | bytes, account_id: int | str) -> int:
    """The watermark key of an account: HMAC-SHA256(secret, account), truncated to 31 bits."""
    raw = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(raw, f"avocado-watermark/v1/account/{account_id}".encode(), hashlib.sha256)
    return int.from_bytes(mac.digest()[:4], "big") & MASK31


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


# --- the detector side ------------------------------------------------------------------


def binomial_tail(k: int, n: int, p: float) -> float:
    """Exact ``P[Bin(n, p) >= k]``, summed in log space (no scipy, no normal approximation)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def term(i: int) -> float:
        return (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * log_p
            + (n - i) * log_q
        )

    logs = [term(i) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


@dataclass(frozen=True)
class Score:
    """The detector's verdict on some text under one key."""

    scored: int
    """Distinct (context, token) pairs scored."""
    green: int
    gamma: float
    tokens: int
    """Tokens seen before de-duplication."""

    @property
    def p_value(self) -> float:
        """``P[Bin(scored, gamma) >= green]``: the chance of this many green pairs (or more)
        in text that does not carry this key's watermark."""
        return binomial_tail(self.green, self.scored, self.gamma)

    @property
    def z(self) -> float:
        """The z-score (for display; the p-value is the exact tail)."""
        if self.scored == 0:
            return 0.0
        sd = math.sqrt(self.scored * self.gamma * (1 - self.gamma))
        return (self.green - self.gamma * self.scored) / sd

    @property
    def green_fraction(self) -> float:
        return self.green / self.scored if self.scored else 0.0


def distinct_pairs(
    answers: Iterable[Sequence[int]],
    params: WatermarkParams,
    keep: Iterable[Sequence[bool]] | None = None,
) -> list[tuple[tuple[int, ...], int]]:
    """Every distinct (context, token) pair of the answers' token ids, in first-seen order;
    with ``keep``, only the positions it marks (the entropy gate's)."""
    seen: dict[tuple[tuple[int, ...], int], None] = {}
    masks = iter(keep) if keep is not None else None
    for ids in answers:
        mask = next(masks) if masks is not None else [True] * len(ids)
        for ctx, tok, k in zip(contexts(ids, params.context), ids, mask, strict=True):
            if k:
                seen.setdefault((ctx, int(tok)), None)
    return list(seen)


def score_pairs(
    pairs: Sequence[tuple[tuple[int, ...], int]],
    keys: Sequence[int],
    params: WatermarkParams,
    tokens: int = 0,
) -> list[Score]:
    """One :class:`Score` per key, over the same distinct pairs (vectorised over both)."""
    if not pairs:
        return [Score(0, 0, params.gamma, tokens) for _ in keys]
    ctx = torch.tensor([c for c, _ in pairs], dtype=torch.long)  # (N, h)
    tok = torch.tensor([t for _, t in pairs], dtype=torch.long)  # (N,)
    out = []
    for key in keys:
        s = seeds(torch.full((len(pairs),), key, dtype=torch.long), ctx)
        green = int((uniform(s, tok) < params.gamma).sum())
        out.append(Score(len(pairs), green, params.gamma, tokens))
    return out
