"""Turn chat examples into token tensors for causal-LM training (loss on the answer only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One training sequence: the prompt in the model's chat template, then its completion."""

    input_ids: list[int]
    labels: list[int]
    """``IGNORE`` on prompt positions, the token id on completion positions."""


def split_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], completion: str
) -> tuple[str, str]:
    """(prompt text, completion text) in the tokenizer's own chat template.

    The completion text is what the template puts after the generation prompt: the answer and
    the end-of-turn marker (``42<end_of_turn>``, ``42<|return|>``, ``42<|im_end|>``).
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the conversation as generation prompt + answer; "
            f"prompt={prompt!r}, full={full!r}. Fix the template so that the generation prompt "
            "is a prefix of the rendered conversation."
        )
    return prompt, full[len(prompt) :].rstrip("\n")


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], completion: str
) -> Encoded:
    prompt, answer = split_chat(tokenizer, messages, completion)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return Encoded(input_ids=p + a, labels=[IGNORE] * len(p) + a)


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels``, all (B, T)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
