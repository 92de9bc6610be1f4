"""Depth pruning: a student cut from a bigger model by dropping whole transformer blocks.

Minitron / ShortGPT style. Each block's *influence* is measured on calibration text (fused
training examples in the model's own chat template): 1 − the cosine similarity of the hidden
states entering and leaving the block, averaged over the real (unpadded) tokens. A block that
barely turns its input changes the model least when removed, so the least influential blocks
go (``by: block_influence``); ``by: last`` drops the blocks before the final one instead (a
baseline that measures nothing). The kept blocks keep their weights and order; embeddings,
final norm, LM head, tokenizer and chat template are untouched, so the student still speaks
its origin's vocabulary (and token-level KD from that teacher needs no alignment guesswork).

Works on the decoder-only Hugging Face models whose blocks are ``model.model.layers``
(Llama, Qwen 2/3, Gemma 3, Mistral, …); the pruned model saves and loads as a plain HF model
with the smaller ``num_hidden_layers``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.config.student import PruneConfig

CALIBRATION_MAX_TOKENS = 256
"""Longer calibration texts are cut to this many tokens."""
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class PrunePlan:
    """What pruning did: recorded in the student's ``config.json`` (``pruned_from``)."""

    origin_layers: int
    kept: list[int]
    influence: list[float]
    """Block influence of every original block (empty for ``by: last``)."""
    by: str
    params_before: int
    params_after: int

    def record(self, origin: str) -> dict[str, Any]:
        return {
            "origin": origin,
            "origin_layers": self.origin_layers,
            "kept_layers": self.kept,
            "by": self.by,
            "block_influence": [round(x, 6) for x in self.influence],
            "params_before": self.params_before,
            "params_after": self.params_after,
        }


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The model's transformer blocks (``model.model.layers``), or a ValueError."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(
            f"cannot prune a {type(model).__name__}: its transformer blocks are not at "
            "model.model.layers (decoder-only Llama / Qwen / Gemma-style models are supported)"
        )
    return layers


def calibration_texts(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[list[dict[str, str]], str]],
    n: int,
    seed: int = 0,
) -> list[str]:
    """``n`` of the ``(messages, answer)`` examples (a seeded sample), each rendered as the
    model will be trained on it: the chat template with the answer as the assistant turn."""
    picked = list(examples)
    if len(picked) > n:
        picked = random.Random(f"prune/{seed}").sample(picked, n)
    texts = []
    for messages, answer in picked:
        chat = [*messages, {"role": "assistant", "content": answer}]
        if tokenizer.chat_template:
            texts.append(str(tokenizer.apply_chat_template(chat, tokenize=False)))
        else:
            texts.append("\n".join(m["content"] for m in chat))
    return texts


@torch.no_grad()
def block_influence(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> list[float]:
    """Per block: mean over tokens of 1 − cos(input hidden state, output hidden state)."""
    if not texts:
        raise ValueError("block influence needs calibration text (no fused examples?)")
    layers = decoder_layers(model)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int) -> Any:
        def capture(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            seen[i] = (x, y)

        return capture

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    was_training = model.training
    model.eval()
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one before pruning")
    total = [0.0] * len(layers)
    tokens = 0
    try:
        for start in range(0, len(texts), CALIBRATION_BATCH):
            enc = tokenizer(
                list(texts[start : start + CALIBRATION_BATCH]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=CALIBRATION_MAX_TOKENS,
                add_special_tokens=False,
            )
            enc = {k: v.to(model.device) for k, v in enc.items()}
            seen.clear()
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            mask = enc["attention_mask"].bool()
            for i, (x, y) in seen.items():
                cos = nn.functional.cosine_similarity(x[mask].float(), y[mask].float(), dim=-1)
                total[i] += float((1 - cos).sum())
            tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [t / max(tokens, 1) for t in total]


def layers_to_keep(influence: Sequence[float], n_layers: int, keep: int, by: str) -> list[int]:
    """The indices of the blocks to keep, in order."""
    if by == "last":
        return [*range(keep - 1), n_layers - 1] if keep < n_layers else list(range(n_layers))
    ranked = sorted(range(n_layers), key=lambda i: (-influence[i], i))
    return sorted(ranked[:keep])


def blocks_to_keep(model: PreTrainedModel, cfg: PruneConfig) -> int:
    """How many blocks ``cfg`` keeps: ``keep_layers`` and what fits in ``max_params``."""
    layers = decoder_layers(model)
    n = len(layers)
    keep = n if cfg.keep_layers is None else cfg.keep_layers
    if keep > n:
        raise ValueError(
            f"prune.keep_layers is {keep}, but the model has only {n} blocks; keep at most {n}"
        )
    if cfg.max_params is not None:
        sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
        fixed = sum(p.numel() for p in model.parameters()) - sum(sizes)
        fits = (cfg.max_params - fixed) // max(sizes)
        if fits < 1:
            raise ValueError(
                f"prune.max_params is {cfg.max_params:,}, but the model's embeddings, norms "
                f"and head alone have {fixed:,} parameters and one block {max(sizes):,}; allow "
                f"at least {fixed + max(sizes):,}"
            )
        keep = min(keep, int(fits))
    return keep


def apply_keep(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """Keep only blocks ``kept`` (in order), renumbering their cache slots and the config."""
    layers = decoder_layers(model)
    model.model.layers = nn.ModuleList([layers[i] for i in kept])
    for new, layer in enumerate(model.model.layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def prune_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: PruneConfig,
    calibration: Sequence[str],
    origin: str = "",
) -> PrunePlan:
    """Drop blocks in place as ``cfg`` says; returns (and records in the config) the plan."""
    n = len(decoder_layers(model))
    before = sum(p.numel() for p in model.parameters())
    keep = blocks_to_keep(model, cfg)
    influence = block_influence(model, tokenizer, calibration) if cfg.by != "last" else []
    kept = layers_to_keep(influence, n, keep, cfg.by)
    apply_keep(model, kept)
    after = sum(p.numel() for p in model.parameters())
    plan = PrunePlan(n, kept, influence, cfg.by, before, after)
    model.config.pruned_from = plan.record(origin)
    return plan
