"""Healing a cut student on its parent's text (``student.heal``), before it learns the task.

A student cut to half its origin's size (:mod:`avocado_llm.distill.prune`) loses much of what
the origin knew: measured on real-small, SmolLM2-135M cut to 67M answers a third as many
held-out knowledge questions. Minitron and Sheared-LLaMA heal the cut by distilling the whole
model (the *parent*) into it on general text. Avocado needs no corpus for that: the parent
writes the text itself, token by token from its first token (its BOS, else its EOS) at
``temperature``, sampling only tokens the student's vocabulary has (so every position maps to
a student token, with no alignment), and the student learns, at every position, the parent's
whole next-token distribution over the student's vocabulary (forward KL, temperature 1). Each
step writes ``batch_size`` new sequences of ``sequence_length`` tokens: the text is never
repeated and never stored.

:func:`heal_student` does it once per cut: the healed weights are kept in
``RUN_DIR/healed/<fingerprint digest>/`` with a record of what made them, and every later
student of the same cut (the ``sft`` baseline beside the student, ``--resume``, a crash before
the task training ended) loads them instead of healing again. An interrupted healing starts
over.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from avocado_llm.config.student import HealConfig
from avocado_llm.harvest.files import atomic_write
from avocado_llm.models.generation import cache_kwarg

RECORD = "heal.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class HealResult:
    """What a healing did: steps and tokens, and the KL (nats per token) of its first and last
    tenth of steps (how much closer to its parent the student came)."""

    steps: int
    tokens: int
    kl_start: float
    kl_end: float
    seconds: float
    reused: bool = False


def vocab_map(
    student_tok: PreTrainedTokenizerBase, parent_tok: PreTrainedTokenizerBase, rows: int
) -> torch.Tensor:
    """The parent's id of each of the student's ``rows`` output ids: the same token string (a
    trimmed vocabulary keeps its tokens' strings, with new ids). An untrimmed student is the
    identity. Raises ``ValueError`` for a token the parent does not have."""
    parent_vocab = parent_tok.get_vocab()
    student_vocab = student_tok.get_vocab()
    if student_vocab == parent_vocab:
        return torch.arange(rows)
    by_id = {i: t for t, i in student_vocab.items()}
    ids = []
    for i in range(rows):
        token = by_id.get(i)
        if token is None or token not in parent_vocab:
            raise ValueError(
                f"student token {i} ({token!r}) is not in its parent's vocabulary: healing needs "
                "a student cut from the parent (student.prune)"
            )
        ids.append(parent_vocab[token])
    return torch.tensor(ids)


def start_id(parent_tok: PreTrainedTokenizerBase) -> int:
    """The token the parent's text starts from: its BOS, else its EOS (a document boundary)."""
    for candidate in (parent_tok.bos_token_id, parent_tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the parent's tokenizer has neither a BOS nor an EOS token to start from")


@torch.no_grad()
def parent_text(
    parent: PreTrainedModel,
    allowed: torch.Tensor,
    first: int,
    batch: int,
    length: int,
    temperature: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` sequences the parent writes from parent token ``first``, each ``length``
    tokens (the first included), drawn among ``allowed`` parent ids. Returns the sequences as
    indices into ``allowed`` (student ids), shape (batch, length), and the parent's
    log-probabilities over ``allowed`` after each but the last token, (batch, length - 1, V)."""
    device = allowed.device
    ids = torch.full((batch, 1), first, dtype=torch.long, device=device)
    picked: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    cache = DynamicCache(config=parent.config)
    kwarg = cache_kwarg(parent)
    for _ in range(length - 1):
        out = parent(input_ids=ids[:, -1:], use_cache=True, logits_to_keep=1, **{kwarg: cache})
        logits = out.logits[:, -1, :].float().index_select(-1, allowed)
        targets.append(torch.log_softmax(logits, dim=-1))
        probs = torch.softmax(logits / temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)
        picked.append(choice)
        ids = torch.cat([ids, allowed[choice]], dim=1)
    return torch.cat(picked, dim=1), torch.stack(targets, dim=1)


def kl_loss(student_logits: torch.Tensor, parent_logprobs: torch.Tensor) -> torch.Tensor:
    """Forward KL(parent ‖ student), nats per position, over the student's vocabulary."""
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    p = parent_logprobs.exp()
    return (p * (parent_logprobs - log_q)).sum(-1).mean()


def heal(
    student: PreTrainedModel,
    student_tok: PreTrainedTokenizerBase,
    parent: PreTrainedModel,
    parent_tok: PreTrainedTokenizerBase,
    cfg: HealConfig,
    seed: int = 0,
    note: Any = print,
) -> HealResult:
    """Heal ``student`` in place on ``cfg.tokens`` tokens of ``parent``'s text."""
    device = next(student.parameters()).device
    rows = student.get_output_embeddings().weight.shape[0]
    allowed = vocab_map(student_tok, parent_tok, rows).to(device)
    first_parent = start_id(parent_tok)
    matches = (allowed == first_parent).nonzero()
    if not len(matches):
        raise ValueError("the parent's start token is not in the student's vocabulary")
    first_student = int(matches[0, 0])
    per_step = cfg.batch_size * cfg.sequence_length
    steps = max(1, math.ceil(cfg.tokens / per_step))
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator(device=device).manual_seed(seed)
    parent.eval()
    student.train()
    losses: list[float] = []
    t0 = time.monotonic()
    every = max(1, steps // 20)
    for step in range(steps):
        text, targets = parent_text(parent, allowed, first_parent, cfg.batch_size,
                                    cfg.sequence_length, cfg.temperature, generator)  # fmt: skip
        inputs = torch.cat(
            [torch.full((cfg.batch_size, 1), first_student, device=device), text[:, :-1]], dim=1
        )
        loss = kl_loss(student(input_ids=inputs).logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"heal step {step + 1}: the KL is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            elapsed = time.monotonic() - t0
            note(f"heal: step {step + 1}/{steps} · KL {loss.item():.3f} · "
                 f"{(step + 1) * per_step / elapsed:,.0f} tokens/s")  # fmt: skip
    student.eval()
    tenth = max(1, steps // 10)
    return HealResult(
        steps=steps,
        tokens=steps * per_step,
        kl_start=sum(losses[:tenth]) / tenth,
        kl_end=sum(losses[-tenth:]) / tenth,
        seconds=round(time.monotonic() - t0, 1),
    )


def heal_student(
    student: PreTrainedModel,
    student_tok: PreTrainedTokenizerBase,
    origin: Path,
    cfg: HealConfig,
    folder: Path,
    fingerprint: dict[str, Any],
    seed: int = 0,
    device: torch.device | str = "cpu",
    note: Any = print,
) -> HealResult:
    """Heal ``student`` (cut from ``origin``) on ``device`` as ``cfg`` says, or load the
    weights a healing with the same ``fingerprint`` left in ``folder``; then keep them there."""
    student.to(device)
    record = folder / RECORD
    try:
        done = json.loads(record.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        done = None
    if done is not None and done.get("fingerprint") == fingerprint:
        weights = load_file(str(folder / WEIGHTS), device=str(next(student.parameters()).device))
        student.load_state_dict(weights, strict=False)
        note(f"heal: reusing {folder} ({done['result']['tokens']:,} tokens)")
        return HealResult(**(done["result"] | {"reused": True}))
    record.unlink(missing_ok=True)  # the folder is complete again only when this one ends
    from transformers import AutoTokenizer

    parent = AutoModelForCausalLM.from_pretrained(origin, dtype=torch.float32).to(device)
    parent_tok = AutoTokenizer.from_pretrained(origin)
    note(f"heal: {cfg.tokens:,} tokens of {origin.name}'s text, {cfg.batch_size} × "
         f"{cfg.sequence_length} a step")  # fmt: skip
    result = heal(student, student_tok, parent, parent_tok, cfg, seed=seed, note=note)
    del parent
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}
    tied = getattr(student.config, "tie_word_embeddings", False)
    if tied:  # one copy of a tied matrix (safetensors refuses shared storage)
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / WEIGHTS))
    text = {"fingerprint": fingerprint, "result": asdict(result), "config": asdict(cfg)}
    atomic_write(record, json.dumps(text, indent=1).encode())
    note(f"heal: KL {result.kl_start:.3f} → {result.kl_end:.3f} nats/token in "
         f"{result.seconds:.0f} s")  # fmt: skip
    return result
