"""Batched generation: left padding and the KV cache, stopping at the model's stop tokens, with
the top-k log-probabilities of every generated position.

The log-probabilities are read from the raw logits, before temperature and top-p (a logits
processor records them, so no (B, T, V) tensor is ever kept). Local teachers keep them;
evaluation asks for none and gets greedy answers from the same code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from avocado_llm.models.chat import Messages


class TopKRecorder(LogitsProcessor):
    """Records, per step, the log-softmax top-k of the raw scores and the log-probability of
    the token that was then chosen; it changes nothing. Only one step's (B, V) is kept."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.top_values: list[torch.Tensor] = []  # per step (B, k)
        self.top_ids: list[torch.Tensor] = []  # per step (B, k)
        self.chosen: list[torch.Tensor] = []  # per step (B,)
        self._prev: torch.Tensor | None = None  # (B, V) log-probs of the previous step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._gather_chosen(input_ids[:, -1])
        logp = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        if self.k > 0:
            values, ids = logp.topk(min(self.k, logp.shape[-1]), dim=-1)
            self.top_values.append(values.cpu())
            self.top_ids.append(ids.cpu())
        self._prev = logp
        return scores

    def finish(self, last_tokens: torch.Tensor) -> None:
        """Gather the last step's chosen token (``generate`` calls no processor after it)."""
        self._gather_chosen(last_tokens)
        self._prev = None

    def _gather_chosen(self, tokens: torch.Tensor) -> None:
        if self._prev is not None:
            self.chosen.append(self._prev.gather(1, tokens[:, None]).squeeze(1).cpu())


@dataclass(frozen=True)
class Sampling:
    """How to generate: greedy at ``temperature`` 0; ``n`` rows per conversation."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    top_logprobs: int = 0
    """Alternatives kept per generated position (0: none)."""
    logprobs: bool = True
    """Record the chosen tokens' log-probabilities (and the top-k); off for plain answers."""
    seed: int | None = None
    """Seeds torch's generator before the batch; ``None`` leaves it as it is."""


@dataclass
class Generation:
    """One generated row: the answer's tokens (without the stop token) and what was recorded."""

    token_ids: list[int]
    stopped: bool
    """Ended at a stop token (else it ran out of ``max_new_tokens``)."""
    prompt_tokens: int
    logprobs: list[float] = field(default_factory=list)
    """Per answer token: its log-probability (empty unless ``Sampling.logprobs``)."""
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    """Per answer token: the k most likely tokens and their log-probabilities, best first."""

    @property
    def completion_tokens(self) -> int:
        """Tokens generated, the stop token included."""
        return len(self.token_ids) + self.stopped


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    stop_ids: list[int],
    sampling: Sampling,
) -> list[list[Generation]]:
    """``sampling.n`` generations per conversation, in one left-padded batch."""
    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    n = sampling.n
    input_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(model.device)  # (B*n, P)
    mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(model.device)
    recorder = TopKRecorder(sampling.top_logprobs) if sampling.logprobs else None
    sample = sampling.temperature > 0
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_p=sampling.top_p if sample else None,
        top_k=None,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([recorder] if recorder else []),
    )
    new = out[:, input_ids.shape[1] :].cpu()  # (B*n, T)
    if recorder is not None:
        recorder.finish(out[:, -1])
    prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
    rows = [
        _row(row, new[row].tolist(), stop_ids, int(prompt_lens[row // n]), recorder)
        for row in range(new.shape[0])
    ]
    return [rows[i * n : (i + 1) * n] for i in range(len(conversations))]


def _row(
    row: int, ids: list[int], stop_ids: list[int], prompt_len: int, rec: TopKRecorder | None
) -> Generation:
    """Row ``row`` of the batch, cut at its first stop token."""
    stop = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    generated = ids[:stop] if stop is not None else ids
    result = Generation(generated, stop is not None, prompt_len)
    if rec is not None:
        positions = range(len(generated))
        result.logprobs = [rec.chosen[p][row].item() for p in positions]
        if rec.k:
            result.top_ids = [rec.top_ids[p][row].tolist() for p in positions]
            result.top_logprobs = [rec.top_values[p][row].tolist() for p in positions]
    return result


def cache_kwarg(model: PreTrainedModel) -> str:
    """The name ``model.forward`` takes its KV cache by: ``cache`` in recent transformers,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
