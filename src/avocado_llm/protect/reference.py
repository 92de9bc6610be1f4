"""The reference test of a suspect model: does it repeat the answers *our watermark changed*?

The owner of the watermarked model has what a text detector lacks: the model itself. For each
prompt the check asks, our model answers greedily without any watermark (one pass, no key).
Under an account's key the engine's greedy answer first leaves that path at the first position
where the gate is open, the top token is red and a green token lies within ``delta`` of it:
there the engine took the best green token instead (``flip``). Everything up to and including
that token is known without running the model again, for any key.

**Statistic** for a key ``k``: of the prompts where ``k`` flips our answer, the share whose
suspect answer follows the flip — the same tokens up to that position, then ``k``'s token. A
model distilled from ``k``'s answers repeats the flips it learned; any other model follows a
key's flips only as often as it picks our second choices at those places.

**p-value** (exact, Monte Carlo): under no distillation the suspect's answers do not depend on
any key, so the account's key is exchangeable with ``n`` random keys: ``p = (1 + #{random keys
scoring at least as high}) / (n + 1)``. Its resolution is ``1 / (n + 1)``; 20,000 keys resolve
5e-5. The prompts the check asks are chosen by our model (where it hesitates), never by a key.

Unlike the text detector this uses whole answers, not de-duplicated token pairs, so it keeps the
evidence a confident model leaves: a few changed answers, repeated by a distilled student.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from avocado_llm.protect.scheme import (
    MASK31,
    START,
    HashTables,
    WatermarkParams,
    gate_entropy,
    mix,
)

if TYPE_CHECKING:
    from avocado_llm.protect.detect import EntropyGate

MAX_CANDIDATES = 8
"""Tokens within ``delta`` of the top one kept per position (more almost never fit)."""


@dataclass(frozen=True)
class FlipTable:
    """Our model's unwatermarked greedy answers and, at every gated position, the tokens a
    watermark could pick instead: enough to replay the first flip under any key."""

    answers: list[list[int]]
    """Per prompt: our unwatermarked answer's token ids, ending with the end token."""
    prompt: torch.Tensor
    """(P,) the prompt of each gated position, in prompt then position order."""
    position: torch.Tensor
    """(P,) the position in the answer."""
    context: torch.Tensor
    """(P, h) the ``h`` answer tokens before it (START-padded)."""
    candidates: torch.Tensor
    """(P, C) token ids within ``delta`` of the top token, the top token first; -1 pads."""
    logits: torch.Tensor
    """(P, C) their logits (-inf pads)."""
    vocab: int
    end: int
    """The end token (an answer that stops at a position takes it there)."""
    delta: float
    params: WatermarkParams


def flip_table(
    gate: EntropyGate,
    prompts: Sequence[list[dict[str, str]]],
    delta: float,
    params: WatermarkParams,
    max_new_tokens: int = 24,
) -> FlipTable:
    """Answer every prompt greedily with the gate's model (no watermark) and record each
    position where ``params``' gate opens."""
    tokenizer = gate.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
    ends = {eos, pad}
    answers: list[list[int]] = []
    rows: list[tuple[int, int, tuple[int, ...], list[int], list[float]]] = []
    vocab = 0
    for start, new, scores in gate.greedy(prompts, max_new_tokens):
        vocab = scores.shape[-1]
        entropy = gate_entropy(scores)  # (B, T)
        for r in range(new.shape[0]):
            tokens = new[r].tolist()
            length = next((t + 1 for t, tok in enumerate(tokens) if tok in ends), len(tokens))
            answer = tokens[:length]
            answers.append(answer)
            padded = [START] * params.context + answer
            for j in range(length):
                if float(entropy[r, j]) < params.min_entropy:
                    continue
                row = scores[r, j]
                top = float(row[answer[j]])
                near = (row >= top - delta).nonzero().flatten()
                order = near[row[near].argsort(descending=True)][:MAX_CANDIDATES].tolist()
                if answer[j] in order:  # the top token first (ties: the one greedy took)
                    order.remove(answer[j])
                order = [answer[j], *order][:MAX_CANDIDATES]
                ctx = tuple(padded[j : j + params.context])
                rows.append((start + r, j, ctx, order, [float(row[t]) for t in order]))
    width = max((len(c) for *_, c, _ in rows), default=1)
    cand = torch.full((len(rows), width), -1, dtype=torch.long)
    lg = torch.full((len(rows), width), float("-inf"))
    for i, (*_, c, v) in enumerate(rows):
        cand[i, : len(c)] = torch.tensor(c)
        lg[i, : len(v)] = torch.tensor(v)
    return FlipTable(
        answers=answers,
        prompt=torch.tensor([r[0] for r in rows], dtype=torch.long),
        position=torch.tensor([r[1] for r in rows], dtype=torch.long),
        context=torch.tensor([r[2] for r in rows], dtype=torch.long).reshape(
            len(rows), params.context
        ),
        candidates=cand,
        logits=lg,
        vocab=vocab,
        end=eos,
        delta=delta,
        params=params,
    )


@dataclass(frozen=True)
class KeyScore:
    flipped: int
    """Prompts whose answer this key's watermark changes."""
    followed: int
    """Of those, suspect answers that follow the change."""

    @property
    def rate(self) -> float:
        return self.followed / self.flipped if self.flipped else 0.0


def key_scores(
    table: FlipTable, suspect: Sequence[Sequence[int]], keys: Sequence[int], chunk: int = 512
) -> list[KeyScore]:
    """For each key: how many prompts it flips, and how many suspect answers follow the flip.
    ``suspect[i]`` are the suspect's answer tokens to prompt ``i`` (our tokenizer; its end
    token is implied by the answer's length)."""
    n_prompts = len(table.answers)
    if len(suspect) != n_prompts:
        raise ValueError(f"{len(suspect)} suspect answers for {n_prompts} prompts")
    p = table.prompt
    if p.numel() == 0:
        return [KeyScore(0, 0) for _ in keys]
    # key-independent: does the suspect share our answer up to each position, and which token
    # does it take there (our end token when its answer ends there; -2 when it is shorter)
    same_prefix = torch.zeros(p.numel(), dtype=torch.bool)
    taken = torch.full((p.numel(),), -2, dtype=torch.long)
    for g, (i, j) in enumerate(zip(p.tolist(), table.position.tolist(), strict=True)):
        ours, theirs = table.answers[i], list(suspect[i])
        if theirs[:j] == ours[:j]:
            same_prefix[g] = True
            taken[g] = theirs[j] if j < len(theirs) else (table.end if j == len(theirs) else -2)
    hashes = HashTables(table.vocab, table.params.context, torch.device("cpu"))
    threshold = int(table.params.gamma * (1 << 31))
    valid = table.candidates >= 0
    cand = table.candidates.clamp(min=0)
    out: list[KeyScore] = []
    for start in range(0, len(keys), chunk):
        k = torch.tensor(list(keys[start : start + chunk]), dtype=torch.long)
        seed = hashes.seeds_many(mix(k & MASK31), table.context)  # (K, P)
        green = (hashes.hashes(seed[..., None], cand[None]) < threshold) & valid[None]  # (K,P,C)
        biased = table.logits[None] + table.delta * green.float()
        pick = biased.argmax(-1)  # (K, P)
        chosen = cand[None].expand(len(k), -1, -1).gather(2, pick[..., None]).squeeze(-1)
        flips = chosen != cand[None, :, 0]  # not the top token: the watermark changed it
        # the first flip of each prompt (positions are in prompt then position order)
        index = torch.arange(p.numel()).expand(len(k), -1)
        first = torch.full((len(k), n_prompts), p.numel(), dtype=torch.long)
        first.scatter_reduce_(
            1,
            p.expand(len(k), -1),
            torch.where(flips, index, p.numel()),
            reduce="amin",
        )
        has = first < p.numel()
        g = first.clamp(max=p.numel() - 1)
        followed = has & same_prefix[g] & (taken[g] == chosen.gather(1, g))
        for f, n in zip(followed.sum(1).tolist(), has.sum(1).tolist(), strict=True):
            out.append(KeyScore(flipped=n, followed=f))
    return out


@dataclass(frozen=True)
class ReferenceResult:
    account_scores: list[KeyScore]
    p_values: list[float]
    """Per account: Monte Carlo p of its rate against the random keys' rates."""
    null_rate: float
    """Mean rate of the random keys: how often the suspect follows a flip by chance."""
    random_keys: int


def reference_test(
    table: FlipTable,
    suspect: Sequence[Sequence[int]],
    account_keys: Sequence[int],
    random_keys: int = 20_000,
    seed: int = 0,
) -> ReferenceResult:
    """Score every account key and ``random_keys`` random ones; exact Monte Carlo p-values."""
    rng = random.Random(seed)
    null = key_scores(table, suspect, [rng.getrandbits(31) for _ in range(random_keys)])
    ours = key_scores(table, suspect, account_keys)
    rates = torch.tensor([s.rate for s in null])
    p_values = [float((1 + int((rates >= s.rate).sum())) / (random_keys + 1)) for s in ours]
    return ReferenceResult(ours, p_values, float(rates.mean()), random_keys)
