"""Load a local causal LM: a Hugging Face directory, or a GGUF file in one (``gguf_file``).

A model is data, not a program: code shipped in its directory is never run
(``trust_remote_code=False`` on every load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from avocado_llm.models.chat import stop_token_ids


class MissingChatTemplate(ValueError):
    """The tokenizer has no chat template and none was given."""


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other value as torch names it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU, float32 on the CPU (where bfloat16 matmuls are slow or missing)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class LocalModel:
    """A loaded model, ready for batched generation (left padding, a pad id)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    stop_ids: list[int]
    """Tokens that end an answer (:func:`~avocado_llm.models.chat.stop_token_ids`)."""


def load_model(
    path: str | Path,
    *,
    gguf_file: str | None = None,
    chat_template: str | None = None,
    device: str | torch.device = "auto",
) -> LocalModel:
    """Tokenizer and model from ``path`` (and ``gguf_file`` in it), in eval mode on ``device``.

    ``chat_template`` (Jinja text) replaces the tokenizer's. Raises
    :class:`MissingChatTemplate` when there is no template at all, and transformers' own
    ``OSError`` / ``ValueError`` for a directory it cannot load."""
    target = pick_device(device)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=default_dtype(target), trust_remote_code=False, **kwargs
    )
    model.to(target).eval()  # type: ignore[arg-type]
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise MissingChatTemplate(f"the tokenizer in {path} has no chat template")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:  # left padding needs some pad id; it is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return LocalModel(model, tokenizer, target, stop_token_ids(model, tokenizer))
