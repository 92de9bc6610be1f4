"""MLP width pruning (``student.prune.mlp_size``), Minitron style.

Each block's MLP computes ``down(act(gate(x)) * up(x))``; its intermediate neurons are ranked by
their mean absolute activation ``|act(gate(x)) * up(x)|`` over the real tokens of calibration
text, and only the ``mlp_size`` most active stay: their rows of ``gate_proj`` and ``up_proj`` and
their columns of ``down_proj``. Works for Llama / Qwen / Gemma / Mistral-style MLPs (a block's
``mlp`` with ``gate_proj``, ``up_proj`` and ``down_proj`` linear layers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def gated_mlp(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """A block's ``(gate_proj, up_proj, down_proj)``, or a ValueError."""
    mlp = getattr(layer, "mlp", None)
    parts = tuple(getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj"))
    if not all(isinstance(p, nn.Linear) for p in parts):
        raise ValueError(
            f"cannot prune the MLP width of a {type(layer).__name__}: its mlp has no "
            "gate_proj / up_proj / down_proj linear layers (Llama / Qwen / Gemma-style MLPs "
            "are supported); remove student.prune.mlp_size"
        )
    return parts  # type: ignore[return-value]


def neuron_cost(layer: nn.Module) -> int:
    """Parameters one intermediate neuron of the block's MLP holds."""
    gate, up, down = gated_mlp(layer)
    cost = gate.in_features + up.in_features + down.out_features
    return cost + (gate.bias is not None) + (up.bias is not None)


def mlp_width(layer: nn.Module) -> int:
    return gated_mlp(layer)[0].out_features


@torch.no_grad()
def neuron_importance(
    model: nn.Module,
    layers: Sequence[nn.Module],
    batches: Iterable[dict[str, torch.Tensor]],
) -> list[torch.Tensor]:
    """Per block, each intermediate neuron's mean |act(gate) * up| over the real tokens of
    ``batches`` (tokenizer outputs with ``input_ids`` and ``attention_mask``)."""
    downs = [gated_mlp(layer)[2] for layer in layers]
    totals = [torch.zeros(d.in_features, dtype=torch.float64) for d in downs]
    mask: list[torch.Tensor] = []

    def hook(i: int) -> Any:
        def capture(module: nn.Module, args: tuple) -> None:
            h = args[0][mask[0]].abs().double().sum(dim=0)
            totals[i] += h.cpu()

        return capture

    handles = [d.register_forward_pre_hook(hook(i)) for i, d in enumerate(downs)]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for enc in batches:
            mask[:] = [enc["attention_mask"].bool()]
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            tokens += int(mask[0].sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not tokens:
        raise ValueError("MLP width pruning needs calibration text (no fused examples?)")
    return [t / tokens for t in totals]


def _slice(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    linear.weight = nn.Parameter(linear.weight.index_select(dim, index).clone())
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].clone())
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


@torch.no_grad()
def apply_width(
    model: nn.Module, layers: Sequence[nn.Module], importance: Sequence[torch.Tensor], size: int
) -> None:
    """Keep each block's ``size`` most important neurons (in their order); set the config's
    ``intermediate_size``."""
    for layer, scores in zip(layers, importance, strict=True):
        gate, up, down = gated_mlp(layer)
        if size > gate.out_features:
            raise ValueError(
                f"prune.mlp_size is {size}, but the MLPs have only {gate.out_features} neurons"
            )
        order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
        index = torch.tensor(sorted(order[:size]), device=gate.weight.device)
        _slice(gate, index, 0)
        _slice(up, index, 0)
        _slice(down, index, 1)
        mlp = layer.mlp
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size
    config = getattr(model, "config", None)
    if config is not None:
        config.get_text_config().intermediate_size = size
