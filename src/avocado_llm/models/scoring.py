"""Teacher-forced scoring: the log-probability a model gives each token of a known answer, or of
every token of a given sequence (an echoed prompt's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.models.chat import IGNORE, Messages, encode_chat


@torch.inference_mode()
def score_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    completions: list[str],
    batch_size: int = 32,
) -> list[list[float]]:
    """Per-token log-probabilities of each completion after its conversation, in the model's
    chat template (the tokens include the end-of-turn marker the template puts after an
    answer). One forward pass per batch of ``batch_size``."""
    if len(conversations) != len(completions):
        raise ValueError(
            f"{len(conversations)} conversations but {len(completions)} completions; "
            "give one completion per conversation"
        )
    encoded = [  # the encoding the zoo was trained with: prompt, then answer + end of turn
        encode_chat(tokenizer, messages, completion)
        for messages, completion in zip(conversations, completions, strict=True)
    ]
    scores: list[list[float]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), right-padded
        for i, e in enumerate(batch):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        for i, e in enumerate(batch):
            end = len(e.input_ids)
            first = end - sum(label != IGNORE for label in e.labels)  # first answer token
            # Position p predicts token p + 1; log-softmax over the answer positions only.
            logp = logits[i, first - 1 : end - 1].float().log_softmax(-1)  # (A, V)
            scores.append(logp.gather(1, ids[i, first:end, None]).squeeze(1).tolist())
    return scores


@dataclass
class PromptScores:
    """Teacher-forced scores of one token sequence, position by position."""

    logprobs: list[float | None]
    """Each token's log-probability given the tokens before it; None for the first."""
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    """Per position: the ``top`` most likely tokens there and their log-probabilities, best
    first (empty for the first position)."""


@torch.inference_mode()
def score_tokens(
    model: PreTrainedModel, ids: Sequence[int], top: int = 0, chunk: int = 512
) -> PromptScores:
    """One forward pass over ``ids`` (no template, no padding): what an echoed prompt's
    log-probabilities are. The log-softmax runs ``chunk`` positions at a time, so a long
    prompt of a large vocabulary never holds a second (T, V) float tensor."""
    first = 1 if ids else 0  # the first token: nothing before it to score it by
    scores = PromptScores([None] * first, [[] for _ in range(first)], [[] for _ in range(first)])
    if len(ids) < 2:
        return scores
    x = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    logits = model(input_ids=x).logits[0, :-1]  # (T - 1, V): position p predicts token p + 1
    targets = x[0, 1:]
    for start in range(0, len(ids) - 1, chunk):
        logp = logits[start : start + chunk].float().log_softmax(-1)  # (C, V)
        chosen = logp.gather(1, targets[start : start + chunk, None]).squeeze(1)
        scores.logprobs += chosen.tolist()
        if top > 0:
            values, tokens = logp.topk(min(top, logp.shape[-1]), dim=-1)
            scores.top_ids += tokens.tolist()
            scores.top_logprobs += values.tolist()
        else:
            scores.top_ids += [[] for _ in chosen]
            scores.top_logprobs += [[] for _ in chosen]
    return scores
