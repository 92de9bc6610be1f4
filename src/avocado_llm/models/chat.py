"""Chat formatting and stop tokens: how a conversation becomes the model's tokens, and which
tokens end its answer.

The template is the tokenizer's own chat template, or the recipe's override (set on the
tokenizer by :func:`~avocado_llm.models.loading.load_model`). Training, teacher scoring and
generation all render through here, so a prompt is tokenized the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE = -100
"""The label of positions that carry no loss (the prompt): PyTorch's ``ignore_index``."""

END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|return|>", "<|end|>", "<|eot_id|>")
"""End-of-turn markers of the known chat templates (Gemma, ChatML, harmony, Llama 3)."""

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Encoded:
    """One training sequence: the prompt in the model's chat template, then its completion."""

    input_ids: list[int]
    labels: list[int]
    """``IGNORE`` on prompt positions, the token id on completion positions."""


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The conversation in the chat template, ending with the assistant's generation prompt."""
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """The token ids of :func:`render_prompt` (the template writes any BOS itself)."""
    return list(
        tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    )


def split_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, completion: str
) -> tuple[str, str]:
    """(prompt text, completion text) in the tokenizer's own chat template.

    The completion text is what the template puts after the generation prompt: the answer and
    the end-of-turn marker (``42<end_of_turn>``, ``42<|return|>``, ``42<|im_end|>``).
    """
    prompt = render_prompt(tokenizer, messages)
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


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages, completion: str) -> Encoded:
    """Prompt + answer (with its end-of-turn marker) as tokens; labels only on the answer."""
    prompt, answer = split_chat(tokenizer, messages, completion)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return Encoded(input_ids=p + a, labels=[IGNORE] * len(p) + a)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end an answer: the generation config's ``eos_token_id`` (in its order),
    the tokenizer's EOS, and the end-of-turn markers (:data:`END_OF_TURN`) that the chat template
    writes and the vocabulary has (a GGUF's generation config often lists only ``<eos>``)."""
    eos = model.generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    vocab = tokenizer.get_vocab()
    template = str(tokenizer.chat_template or "")
    markers = [vocab[m] for m in END_OF_TURN if m in template and m in vocab]
    for token_id in [tokenizer.eos_token_id, *markers]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids
