"""One batched generation, step by step: the decode loop behind dynamic batching.

Every choice of every request in the batch is a :class:`Row`. The prompts are left-padded into
one (B, P) tensor and prefilled in one forward pass; then each step feeds the B last tokens
through the model with the KV cache, picks each row's token with its own temperature, top-p,
seed and watermark (:mod:`avocado_llm.serve.sampling`), and turns the new token into text
(holding back what could be the start of a stop string). Rows that finish — end of turn, a stop
string, ``max_tokens``, or a client that hung up — leave the batch at once (their cache rows
are dropped), so a long answer does not make the short ones wait, and the remaining rows run on
a smaller batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.models.generation import cache_kwarg
from avocado_llm.serve.engine import SamplingOptions, TokenLogprob
from avocado_llm.serve.sampling import sampler_for


class TextTracker:
    """Incremental detokenisation of one row with stop strings.

    Decodes all the row's tokens each step (cheap for answers of hundreds of tokens, and
    exact for byte-level BPE where one character spans several tokens); the stop strings are
    matched incrementally (:class:`StopMatcher`), so each step's cost does not grow with their
    length."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.matcher = StopMatcher(self.stops)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token: (text that is now safe to send, whether a stop string was reached)."""
        self.ids.append(token_id)
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if text.endswith("\ufffd"):  # the middle of a multi-byte character
            return "", False
        found = self.matcher.feed(text)
        if found is not None:
            cut = max(found, self.sent)
            delta, self.sent = text[self.sent : cut], cut
            return delta, True
        safe = max(self.sent, len(text) - self.matcher.held())
        delta, self.sent = text[self.sent : safe], safe
        return delta, False

    def flush(self) -> str:
        """The text still held back, at the end of a row that did not stop on a stop string."""
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        delta, self.sent = text[self.sent :], len(text)
        return delta


class StopMatcher:
    """Finds the first stop string in text that arrives piece by piece, in time linear in the
    text and in the stop strings: a Knuth–Morris–Pratt automaton per stop string.

    Each new character is looked at once per stop string. An automaton's state is the longest
    prefix of its stop string that the text fed so far ends with, so a stop string split
    across any number of tokens is found, and that prefix is what a stream must hold back.
    (Matching by copying every prefix of every stop string at every token was quadratic in
    their length: four stop strings of 240 KB stalled the whole batch for seconds.)"""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._fail = [_failure(s) for s in self.stops]
        self._state = [0] * len(self.stops)
        self.fed = 0
        """Characters of the text fed so far."""

    def feed(self, text: str) -> int | None:
        """Feed ``text[self.fed:]`` (``text`` extends what was fed before). Returns where the
        earliest-starting stop string that the new characters complete starts, or None."""
        start, new = self.fed, text[self.fed :]
        self.fed = max(self.fed, len(text))
        found: int | None = None
        for i, stop in enumerate(self.stops):
            if not stop:  # an empty stop string ends the text at once (str.find's answer)
                found = 0
                continue
            fail, q = self._fail[i], self._state[i]
            for offset, ch in enumerate(new):
                while q and stop[q] != ch:
                    q = fail[q - 1]
                if stop[q] == ch:
                    q += 1
                if q == len(stop):  # the stop string's first occurrence ends here
                    at = start + offset + 1 - q
                    found = at if found is None else min(found, at)
                    break
            self._state[i] = q
        return found

    def held(self) -> int:
        """How many characters at the end of the text could be the start of a stop string."""
        states = zip(self._state, self.stops, strict=True)
        return max((q for q, stop in states if q < len(stop)), default=0)


def _failure(pattern: str) -> list[int]:
    """KMP's failure function: for each prefix of ``pattern``, its longest proper border."""
    fail = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail


@dataclass
class Row:
    """One choice being generated."""

    job: Any
    """The request it belongs to (the engine's; has a ``cancelled`` flag)."""
    index: int
    """Choice index in the request's answer."""
    prompt_ids: list[int]
    options: SamplingOptions
    tracker: TextTracker
    seed: int
    """The row's sampling seed (62 bits: :func:`~avocado_llm.serve.sampling.row_seed`)."""
    produced: int = 0
    finish: str | None = None
    """``stop``, ``length`` or ``cancelled`` once the row is done."""
    text: str = ""
    """Text produced by the last step, not yet delivered."""
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def advance(self, token: int, eos_ids: frozenset[int], lp: TokenLogprob | None) -> None:
        """Take the token sampled for this row."""
        self.produced += 1
        if lp is not None:
            self.logprobs.append(lp)
        if token in eos_ids and not self.options.ignore_eos:
            self.text += self.tracker.flush()
            self.finish = "stop"
            return
        delta, stopped = self.tracker.push(token)
        self.text += delta
        if stopped:
            self.finish = "stop"
        elif self.produced >= self.options.max_tokens:
            self.text += self.tracker.flush()
            self.finish = "length"


def _logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, rows: Sequence[Row], decode: Callable[[int], str]
) -> list[TokenLogprob | None]:
    """Log-probabilities of each row's chosen token under the softmax of its logits, the
    watermark's bias included (no temperature or nucleus applied)."""
    wanted = [r.options.logprobs for r in rows]
    if all(k is None for k in wanted):
        return [None] * len(rows)
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    chosen = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
    top_v, top_i = logp.topk(max(max(k or 0 for k in wanted), 1), dim=-1)  # (B, k)
    out: list[TokenLogprob | None] = []
    for i, k in enumerate(wanted):
        if k is None:
            out.append(None)
            continue
        ids, values = top_i[i, :k].tolist(), top_v[i, :k].tolist()
        top = [(decode(t), v) for t, v in zip(ids, values, strict=True)]
        out.append(TokenLogprob(decode(int(tokens[i])), chosen[i], top))
    return out


@torch.inference_mode()
def decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[Row],
    eos_ids: frozenset[int],
    on_step: Callable[[list[Row]], None],
) -> None:
    """Generate every row to its end, calling ``on_step(rows)`` after each sampled token
    (the rows still in the batch, including those that just finished)."""
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # left padding: every row's last token is at -1
        ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        mask[i, width - len(row.prompt_ids) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P): padding does not shift RoPE
    cache = DynamicCache(config=model.config)
    kwarg = cache_kwarg(model)

    def forward(input_ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1, **{kwarg: cache})  # fmt: skip
        return out.logits[:, -1].float().contiguous()  # (B, V)

    def text_of(token: int) -> str:
        return str(tokenizer.decode([token]))

    logits = forward(ids, positions)
    last = positions[:, -1]  # (B,)
    live = rows
    sampler = sampler_for(
        [r.options.watermark for r in rows],
        [r.options.temperature for r in rows],
        [r.options.top_p for r in rows],
        [r.seed for r in rows],
        device,
        # log-probabilities are the watermarked distribution's: they leak no unmarked one
        biased_logits=any(r.options.logprobs is not None for r in rows),
    )
    while True:
        tokens = sampler.choose(logits)
        logprobs = _logprobs(logits, tokens, live, text_of)
        for row, token, lp in zip(live, tokens.tolist(), logprobs, strict=True):
            row.advance(token, eos_ids, lp)
            if row.finish is None and row.job.cancelled:
                row.finish = "cancelled"
        on_step(live)
        keep = [i for i, row in enumerate(live) if row.finish is None]
        if not keep:
            return
        if len(keep) < len(live):  # drop finished rows from the batch and its KV cache
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            sampler.select(index)
            mask, last, tokens = mask[index], last[index], tokens[index]
            live = [live[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        last = last + 1
        logits = forward(tokens[:, None], last[:, None])
