"""Distillation training, a linear recipe: setup → train → save.

Runs through ``accelerate``, so the same code trains on the CPU, one GPU, or several GPUs with
``accelerate launch`` (DDP/FSDP). The loss is α·CE on the fused target text plus (1 − α)·KD on
the teachers' aligned top-k distributions, weighted per example by fusion, and normalised by
the global number of completion tokens of the step, so gradient accumulation and data
parallelism give exactly the gradient of one big batch.

Resumable to the bit: the batch of step ``s`` is drawn from a generator seeded by ``(seed, s)``,
so a checkpoint (model, optimizer, scheduler, RNG states and the step) is all the data position
there is. Killed at any step and resumed, a run ends at the same loss as an uninterrupted one.

It is the house's one training loop: the teacher zoo trains through it too, with cross-entropy
only (``alpha_ce = 1``, no KD targets) and the :class:`LoopSettings` that reproduce the zoo's
shipped teachers bit for bit (:data:`avocado_llm.zoo.sft.ZOO_LOOP`).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel

from avocado_llm.config import TrainingConfig
from avocado_llm.distill.batches import DistillBatch, DistillItem, collate_items
from avocado_llm.distill.checkpoints import LossLog, load_checkpoint, save_checkpoint
from avocado_llm.distill.data import IGNORE
from avocado_llm.distill.losses import sparse_kl

KD_KIND = {"forward_kl": "forward", "reverse_kl": "reverse", "jsd": "jsd"}


@dataclass
class StepLoss:
    loss: float
    ce: float
    kd: float


@dataclass(frozen=True)
class LoopSettings:
    """How the loop draws batches, decays weights and applies the peak learning rate: what a
    recipe's training section does not say. The defaults are distillation's."""

    draw: Literal["per_step", "stream"] = "per_step"
    """``per_step``: step ``s`` draws from a generator seeded by ``(seed, s)``; ``stream``: one
    generator, seeded by ``seed`` once, draws every step's batch in turn (a resumed run replays
    the draws of the steps already done)."""
    decay: Literal["all", "matrices"] = "all"
    """Weight decay on every parameter, or on matrices only (never on norms and biases)."""
    peak_in_factor: bool = False
    """The schedule's factor carries the peak learning rate (the optimizer's base rate is 1):
    the same schedule, rounded as ``peak · (s + 1) / warmup`` rather than ``peak · ((s + 1) /
    warmup)``, which is how the zoo's shipped teachers were trained."""


class NonFiniteLoss(ValueError):
    """Training met a NaN or infinite value; it stops before any reaches the weights."""


NON_FINITE_HINT = (
    "check the harvest's log-probabilities (NaN, infinite or positive values: harvests made "
    "before the endpoint teacher refused them may hold some; harvest those teachers again, or "
    "distill with --no-kd) and the fusion weights, or lower training.learning_rate"
)


def _check_targets(items: list[DistillItem]) -> None:
    """Refuse, before the first step, KD targets that are not probabilities."""
    bad = [
        n
        for n, item in enumerate(items)
        for t in item.teachers
        if not (math.isfinite(t.weight) and t.probs.isfinite().all() and t.rest.isfinite().all())
    ]
    if bad:
        raise NonFiniteLoss(
            f"the KD targets of {len(set(bad))} of {len(items)} training examples hold NaN or "
            f"infinite probabilities (the first: example {bad[0]}); nothing was trained: "
            + NON_FINITE_HINT
        )


def _check_finite(step: int, totals: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
    """Stop at the first step whose loss (or gradient) is not finite, naming it."""
    norm = float(grad_norm) if grad_norm is not None else 0.0
    if totals.isfinite().all() and math.isfinite(norm):
        return
    loss, ce, kd = totals.tolist()
    raise NonFiniteLoss(
        f"training stopped at step {step}: the loss is {loss} (CE {ce}, KD {kd}, gradient norm "
        f"{norm}); this step changed no weight and the student was not saved (earlier "
        f"checkpoints are kept): " + NON_FINITE_HINT
    )


def lr_lambda(cfg: TrainingConfig, peak: float = 1.0) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% of the peak; ``peak`` scales the factor."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return peak * (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    return f


def make_optimizer(
    model: PreTrainedModel, cfg: TrainingConfig, loop: LoopSettings
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its warm-up/cosine schedule, as ``loop`` says."""
    params: object = model.parameters()
    if loop.decay == "matrices":
        named = list(model.named_parameters())
        params = [
            {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ]
    base = 1.0 if loop.peak_in_factor else cfg.learning_rate
    opt = torch.optim.AdamW(
        params,  # type: ignore[arg-type]
        lr=base,
        weight_decay=cfg.weight_decay,
        betas=(0.9, 0.98),
    )
    peak = cfg.learning_rate if loop.peak_in_factor else 1.0
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, peak))


def step_indices(
    seed: int,
    step: int,
    n_items: int,
    batch: int,
    micro: int,
    weights: torch.Tensor | None = None,
) -> list[list[int]]:
    """The items of every micro-batch of ``step`` on every rank: a pure function of the step."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return draw_indices(gen, n_items, batch, micro, weights)


def draw_indices(
    gen: torch.Generator,
    n_items: int,
    batch: int,
    micro: int,
    weights: torch.Tensor | None = None,
) -> list[list[int]]:
    """``micro`` lists of ``batch`` items, drawn from ``gen`` with replacement, uniformly or in
    proportion to ``weights`` (n_items,)."""
    if weights is None:
        flat = torch.randint(n_items, (micro * batch,), generator=gen).tolist()
    else:
        flat = torch.multinomial(weights, micro * batch, replacement=True, generator=gen).tolist()
    return [flat[i * batch : (i + 1) * batch] for i in range(micro)]


def batch_draws(
    loop: LoopSettings,
    seed: int,
    start: int,
    shape: tuple[int, int, int],
    weights: torch.Tensor | None,
) -> Callable[[int], list[list[int]]]:
    """Step → the indices of its micro-batches; ``shape`` is (items, batch, micro)."""
    n_items, batch, micro = shape
    if loop.draw == "per_step":
        return lambda step: step_indices(seed, step, n_items, batch, micro, weights)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(start):  # a resumed stream replays the draws of the steps already done
        draw_indices(gen, n_items, batch, micro, weights)
    return lambda step: draw_indices(gen, n_items, batch, micro, weights)


def sampling_weights(
    items: list[DistillItem],
    balance: bool,
    temperature: float | None = None,
    family_weights: Mapping[str, float] | None = None,
) -> torch.Tensor | None:
    """Per-item weights that give every group (task family) the same share, or with a
    ``temperature`` T a share proportional to (its items)^(1/T), each group's share then scaled by
    its ``family_weights`` entry (unlisted: 1); ``None``: uniform."""
    groups = Counter(item.group for item in items)
    scale = {g: float(w) for g, w in (family_weights or {}).items() if g in groups}
    for group, w in scale.items():
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"weight of {group!r} must be a finite number > 0, got {w}")
    if not balance or len(groups) < 2:
        if not balance and len({scale.get(g, 1.0) for g in groups}) > 1:
            return torch.tensor([scale.get(item.group, 1.0) for item in items], dtype=torch.float64)
        return None
    if temperature is None:
        per_group = {g: 1.0 / n for g, n in groups.items()}
    elif not temperature > 0:
        raise ValueError(f"balance temperature must be > 0, got {temperature}")
    else:
        # share_g / n_g = n_g^(1/T) / n_g: T = 1 is uniform per item, T -> inf equal per group.
        exponent = 1.0 / temperature - 1.0
        per_group = {g: float(n) ** exponent for g, n in groups.items()}
    if scale:  # unweighted recipes keep their exact draws: the same numbers, not multiplied by 1
        per_group = {g: w * scale.get(g, 1.0) for g, w in per_group.items()}
    return torch.tensor([per_group[item.group] for item in items], dtype=torch.float64)


def batch_loss(
    model: PreTrainedModel, batch: DistillBatch, cfg: TrainingConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed (not averaged) CE and KD of a batch, and their mix: the caller normalises."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits.float()  # (B, T, V)
    shift_logits = logits[:, :-1]
    shift_labels = batch.labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    if batch.kd_rows.numel() and cfg.alpha_ce < 1:
        student_logp = torch.log_softmax(logits[batch.kd_rows, batch.kd_cols], dim=-1)  # (P, V)
        per_pos = sparse_kl(
            student_logp,
            batch.kd_ids,
            batch.kd_probs,
            batch.kd_rest,
            kind=KD_KIND[cfg.kd_loss],
            beta=cfg.jsd_beta,
        )  # (P,)
        kd = (per_pos * batch.kd_weight).sum()
    else:
        kd = logits.sum() * 0.0
    return cfg.alpha_ce * ce + (1 - cfg.alpha_ce) * kd, ce, kd


def train(
    model: PreTrainedModel,
    items: list[DistillItem],
    cfg: TrainingConfig,
    *,
    pad_id: int,
    out_dir: Path | None,
    seed: int = 0,
    resume: bool = False,
    evaluate: Callable[[PreTrainedModel], dict[str, float]] | None = None,
    accelerator: Accelerator | None = None,
    stop_after: int | None = None,
    loop: LoopSettings = LoopSettings(),
    description: str = "distill",
) -> list[StepLoss]:
    """Train ``model`` on ``items``; checkpoints and ``loss.jsonl`` go to ``out_dir`` (``None``:
    neither is written, and there is nothing to resume from)."""
    if not items:
        raise ValueError("no training items: the fusion kept no example; check the harvest")
    if out_dir is None and resume:
        raise ValueError("resume needs the out_dir that holds the checkpoints")
    _check_targets(items)
    acc = accelerator or Accelerator(
        cpu=cfg.device == "cpu",
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision],
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    model, opt, sched = acc.prepare(model, *make_optimizer(model, cfg, loop))
    start = load_checkpoint(acc, out_dir) if out_dir is not None and resume else 0
    log = LossLog(out_dir, start, acc.is_main_process)
    history: list[StepLoss] = []
    world = acc.num_processes
    last = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    weights = sampling_weights(
        items, cfg.balance_families, cfg.balance_temperature, cfg.family_weights
    )
    draws = batch_draws(
        loop, seed, start, (len(items), cfg.batch_size * world, cfg.grad_accum), weights
    )
    with _progress(acc.is_main_process) as progress:
        task = progress.add_task(description, total=cfg.steps, completed=start, loss=float("nan"))
        for step in range(start, last):
            lr = sched.get_last_lr()[0]
            record = _step(
                acc, model, cfg, step, [[items[i] for i in idx] for idx in draws(step)], pad_id
            )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append(record)
            metrics = {}
            if evaluate and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                metrics = evaluate(acc.unwrap_model(model)) if acc.is_main_process else {}
            log.write(step, asdict(record), lr, metrics)
            if out_dir is not None and (
                (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps
            ):
                save_checkpoint(acc, out_dir, step + 1, cfg.keep_checkpoints)
            progress.update(task, advance=1, loss=record.loss)
    acc.wait_for_everyone()
    return history


def _step(
    acc: Accelerator,
    model: PreTrainedModel,
    cfg: TrainingConfig,
    step: int,
    micro: list[list[DistillItem]],
    pad_id: int,
) -> StepLoss:
    """Forward and backward over the step's micro-batches (every rank's items in ``micro``),
    then clip: the gradient is that of the loss summed over the step, divided by its global
    number of completion tokens. Raises before the update on a non-finite loss or gradient."""
    world = acc.num_processes
    batches = [collate_items(batch[acc.process_index :: world], pad_id) for batch in micro]
    n_global = sum(item.n_targets for batch in micro for item in batch)  # all ranks
    model.train()
    totals = torch.zeros(3)
    for m, batch in enumerate(batches):
        sync = nullcontext() if m == len(batches) - 1 else acc.no_sync(model)
        with sync:
            loss, ce, kd = batch_loss(model, batch.to(acc.device), cfg)
            # DDP averages gradients over ranks: scale so the sum is over the step.
            acc.backward(loss * world / n_global)
        totals += torch.tensor([loss.item(), ce.item(), kd.item()])
    totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu() / n_global
    norm = acc.clip_grad_norm_(model.parameters(), 1.0)
    _check_finite(step, totals, norm)  # before the update: no NaN reaches the weights
    return StepLoss(*totals.tolist())


def _progress(active: bool) -> Progress | _LineProgress:
    """A live bar on a terminal; in a log (stdout not a terminal) a plain line every 5%."""
    if active and not sys.stdout.isatty():
        return _LineProgress()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps · loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, transient=True, disable=not active)


class _LineProgress:
    """The training bar's lines for a log file: ``distill: step 300/6000 (5%) · loss 0.4123 ·
    1:02 elapsed, ~19:38 left``, each 5% of the steps and at the last."""

    def __init__(self) -> None:
        self.description, self.total, self.done, self.first = "", 1, 0, 0
        self.started = time.monotonic()

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, *, total: int, completed: int, loss: float) -> int:
        self.description, self.total, self.done, self.first = (
            description,
            total,
            completed,
            completed,
        )
        self.started = time.monotonic()
        return 0

    def update(self, task: int, *, advance: int, loss: float) -> None:
        self.done += advance
        every = max(1, self.total // 20)
        if self.done % every and self.done != self.total:
            return
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(
            f"{self.description}: step {self.done}/{self.total} "
            f"({100 * self.done // self.total}%) · loss {loss:.4f} · "
            f"{_clock(elapsed)} elapsed, ~{_clock(left)} left",
            flush=True,
        )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
