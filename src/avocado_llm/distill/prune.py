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

Two more cuts make a half-size student that keeps more of its origin: ``mlp_size`` keeps each
MLP's most active neurons (:mod:`avocado_llm.distill.width`, measured after the blocks are
dropped), and ``vocab_size`` trims the vocabulary to the tokens the task uses
(:mod:`avocado_llm.distill.vocab_trim`; the tokenizer is rewritten). ``max_params`` sizes the
one free dimension (``fit``) and refuses a student that cannot fit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.vocab_trim import current_vocab_params, trim_vocab, vocab_params
from avocado_llm.distill.width import apply_width, mlp_width, neuron_cost, neuron_importance

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
    mlp: dict[str, int] | None = None
    """``{"before": neurons, "after": mlp_size}`` when the MLPs were narrowed."""
    vocab: dict[str, int] | None = None
    """``{"before": tokens, "after": tokens, …}`` when the vocabulary was trimmed."""
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, compare=False, repr=False)
    """The trimmed tokenizer, to use from now on with the model (None: unchanged)."""

    def record(self, origin: str) -> dict[str, Any]:
        record = {
            "origin": origin,
            "origin_layers": self.origin_layers,
            "kept_layers": self.kept,
            "by": self.by,
            "block_influence": [round(x, 6) for x in self.influence],
            "params_before": self.params_before,
            "params_after": self.params_after,
        }
        if self.mlp is not None:
            record["mlp_size"] = self.mlp
        if self.vocab is not None:
            record["vocab"] = self.vocab
        return record


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


def calibration_batches(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> Iterator[dict[str, torch.Tensor]]:
    """``texts`` tokenized in padded batches on the model's device."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one before pruning")
    for start in range(0, len(texts), CALIBRATION_BATCH):
        enc = tokenizer(
            list(texts[start : start + CALIBRATION_BATCH]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=CALIBRATION_MAX_TOKENS,
            add_special_tokens=False,
        )
        yield {k: v.to(model.device) for k, v in enc.items()}


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
    total = [0.0] * len(layers)
    tokens = 0
    try:
        for enc in calibration_batches(model, tokenizer, texts):
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


@dataclass(frozen=True)
class Sizes:
    """What the student keeps: blocks, MLP neurons per block, vocabulary (None: all)."""

    layers: int
    mlp_size: int | None
    vocab_size: int | None


def _vocab_size(model: PreTrainedModel, cfg: PruneConfig) -> int:
    rows = model.get_input_embeddings().weight.shape[0]
    return rows if cfg.vocab_size is None else min(cfg.vocab_size, rows)


def plan_sizes(model: PreTrainedModel, cfg: PruneConfig) -> Sizes:
    """The student's size as ``cfg`` says: ``keep_layers``, ``mlp_size``, ``vocab_size``, and
    ``max_params`` filling the ``fit`` dimension (or refusing a student that exceeds it)."""
    layers = decoder_layers(model)
    n = len(layers)
    keep = n if cfg.keep_layers is None else cfg.keep_layers
    if keep > n:
        raise ValueError(
            f"prune.keep_layers is {keep}, but the model has only {n} blocks; keep at most {n}"
        )
    if cfg.mlp_size is None and cfg.vocab_size is None and cfg.fit == "layers":
        return Sizes(_depth_fit(model, cfg, keep), None, None)  # depth only, as before
    cost = max(neuron_cost(layer) for layer in layers)
    width = max(mlp_width(layer) for layer in layers)
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    attention = max(size - width * cost for size in sizes)  # a block without its MLP
    fixed = sum(p.numel() for p in model.parameters()) - sum(sizes)
    vocab = _vocab_size(model, cfg)
    fixed += vocab_params(model, vocab) - current_vocab_params(model)
    mlp = cfg.mlp_size
    if mlp is not None and mlp > width:
        raise ValueError(f"prune.mlp_size is {mlp}, but the MLPs have only {width} neurons")
    if cfg.max_params is not None and cfg.fit == "mlp_size":
        fits = (cfg.max_params - fixed - keep * attention) // (keep * cost)
        mlp = min(width, fits // 8 * 8 if fits >= 8 else fits)
        if mlp < 1:
            raise ValueError(
                f"prune.max_params is {cfg.max_params:,}, but {keep} blocks without their MLPs "
                f"and the rest of the model (vocabulary {vocab:,}) already have "
                f"{fixed + keep * attention:,} parameters; allow more, keep fewer layers or "
                "trim the vocabulary further"
            )
    block = attention + (width if mlp is None else mlp) * cost
    if cfg.max_params is not None and cfg.fit == "layers" and cfg.keep_layers is None:
        keep = min(keep, (cfg.max_params - fixed) // block)
    total = fixed + keep * block
    if cfg.max_params is not None and (keep < 1 or total > cfg.max_params):
        raise ValueError(
            f"prune.max_params is {cfg.max_params:,}, but the student would have "
            f"{fixed + max(keep, 1) * block:,} parameters: {max(keep, 1)} blocks of {block:,} "
            f"(MLP width {width if mlp is None else mlp}) and {fixed:,} in the embeddings "
            f"(vocabulary {vocab:,}), norms and head. Fix: fewer keep_layers, a smaller "
            "mlp_size or vocab_size, fit: mlp_size, or a larger max_params"
        )
    return Sizes(int(keep), mlp, cfg.vocab_size)


def _depth_fit(model: PreTrainedModel, cfg: PruneConfig, keep: int) -> int:
    layers = decoder_layers(model)
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


def blocks_to_keep(model: PreTrainedModel, cfg: PruneConfig) -> int:
    """How many blocks ``cfg`` keeps: ``keep_layers`` and what fits in ``max_params``."""
    return plan_sizes(model, cfg).layers


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
    corpus: Sequence[str] | None = None,
) -> PrunePlan:
    """Prune in place as ``cfg`` says: blocks, then MLP neurons (measured on ``calibration``),
    then the vocabulary (its token counts from ``corpus``, default ``calibration``). Returns
    the plan (also recorded in the config); with the vocabulary trimmed, ``plan.tokenizer`` is
    the model's new tokenizer."""
    n = len(decoder_layers(model))
    before = sum(p.numel() for p in model.parameters())
    sizes = plan_sizes(model, cfg)
    influence = block_influence(model, tokenizer, calibration) if cfg.by != "last" else []
    kept = layers_to_keep(influence, n, sizes.layers, cfg.by)
    apply_keep(model, kept)
    mlp = None
    if sizes.mlp_size is not None:
        layers = decoder_layers(model)
        width = max(mlp_width(layer) for layer in layers)
        if sizes.mlp_size < width:
            batches = calibration_batches(model, tokenizer, calibration)
            importance = neuron_importance(model, layers, batches)
            apply_width(model, layers, importance, sizes.mlp_size)
        mlp = {"before": width, "after": min(width, sizes.mlp_size)}
    vocab, trimmed = None, None
    if sizes.vocab_size is not None:
        texts = calibration if corpus is None else corpus
        trimmed, vocab = trim_vocab(model, tokenizer, texts, sizes.vocab_size)
    after = sum(p.numel() for p in model.parameters())
    plan = PrunePlan(n, kept, influence, cfg.by, before, after, mlp, vocab, trimmed)
    model.config.pruned_from = plan.record(origin)
    return plan
