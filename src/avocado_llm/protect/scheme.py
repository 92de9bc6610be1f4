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

**Where the code lives.** The engine's side (parameters, hash, gate, green lists) is the
dependency-free package ``avocado_watermark`` (``packages/avocado-watermark``), re-exported
here: the in-process engine and the vLLM logits processor run the same functions.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from avocado_watermark.scheme import (
    DEFAULT_DELTA,
    DEFAULT_PARAMS,
    FULL_ENTROPY_MAX_VOCAB,
    GATE_TOP,
    M1,
    M2,
    M3,
    MASK31,
    SPREAD,
    START,
    HashTables,
    Watermark,
    WatermarkParams,
    contexts,
    gate_entropy,
    green_mask,
    hash_tables,
    is_green,
    mix,
    mix_int,
    seeds,
    top_entropy,
    uniform,
)

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_PARAMS",
    "FULL_ENTROPY_MAX_VOCAB",
    "GATE_TOP",
    "M1",
    "M2",
    "M3",
    "MASK31",
    "SPREAD",
    "START",
    "HashTables",
    "Score",
    "Watermark",
    "WatermarkParams",
    "account_key",
    "binomial_tail",
    "contexts",
    "distinct_pairs",
    "gate_entropy",
    "green_mask",
    "hash_tables",
    "is_green",
    "mix",
    "mix_int",
    "score_pairs",
    "seeds",
    "top_entropy",
    "uniform",
]


def account_key(secret: str | bytes, account_id: int | str) -> int:
    """The watermark key of an account: HMAC-SHA256(secret, account), truncated to 31 bits."""
    raw = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(raw, f"avocado-watermark/v1/account/{account_id}".encode(), hashlib.sha256)
    return int.from_bytes(mac.digest()[:4], "big") & MASK31


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
