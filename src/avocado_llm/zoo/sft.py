"""The zoo's training loop: AdamW, linear warm-up then cosine decay, answer-only cross-entropy.

The teachers are trained from scratch with it; the student's loop is
:mod:`avocado_llm.distill.train`. They differ in the batch draw (one generator here, one seed
per step there), the weight decay (matrices only here) and the loss's normalisation, so the
zoo keeps this loop: on the distillation loop the shipped teachers' weights, and the numbers
in ``zoo.json``, would change."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel

from avocado_llm.distill.data import Encoded, collate


@dataclass(frozen=True)
class SFTSettings:
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    grad_clip: float = 1.0


def lr_at(step: int, s: SFTSettings) -> float:
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_sft(
    model: PreTrainedModel,
    data: list[Encoded],
    settings: SFTSettings,
    pad_id: int,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``data``; returns the loss of every step."""
    if not data:
        raise ValueError("no training examples: check the recipe's families and harvest")
    gen = torch.Generator().manual_seed(settings.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps · loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=settings.steps, loss=float("nan"))
        for step in range(settings.steps):
            idx = torch.randint(len(data), (settings.batch_size,), generator=gen).tolist()
            batch = collate([data[i] for i in idx], pad_id)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, settings)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            progress.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return losses
