"""Distillation losses: pure functions over tensors, computed in fp32 whatever the input dtype.

Notation: N positions, V student vocabulary, K stored alternatives per position, B × T a batch of
sequences, M teachers. ``q`` is the teacher's (target) distribution, ``p`` the student's.

- :func:`cross_entropy` — the hard-label term.
- :func:`forward_kl`, :func:`reverse_kl`, :func:`generalized_jsd` — KD on full distributions
  (same tokenizer), as in GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models").
- :func:`sparse_kl` — KD on a stored top-k target lumped into ``U ∪ {REST}``: the student's
  log-probs are gathered at the K target ids, everything else is one REST outcome.
- :func:`uld_sorted_l1` — ULD's distance between sorted distributions (Boizard et al. 2024,
  "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss").
- :func:`distill_loss` — ``α·CE + (1−α)·Σ_m w_{b,m}·ΣKL_m``, both sums divided by ``n_b``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100
Divergence = Literal["forward", "reverse", "jsd"]
REST_FLOOR = 1e-6
"""Smallest q_REST that reverse KL sees: a teacher with no tail mass would make any student tail
mass infinitely costly; the floor keeps that cost finite and its gradient pointing down."""
MAX_LOG_U = -1e-7
"""Cap on log Σ_U p: fp32 cannot resolve a student tail below ~1e-7, so log p_REST stays finite."""
_NEG = torch.finfo(torch.float32).min


def cross_entropy(
    logits: Tensor, labels: Tensor, *, reduction: Literal["sum", "mean"] = "sum"
) -> Tensor:
    """Cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T); ``IGNORE`` (-100) skipped.

    ``labels[b, t]`` is the token that ``logits[b, t]`` predicts (already shifted). With no
    labelled position, ``"mean"`` returns ``0·logits.sum()`` rather than NaN.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (B·T, V)
    total = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    if reduction == "sum":
        return total
    count = (labels != IGNORE).sum()
    return total / count if count > 0 else 0.0 * logits.sum()


def _pointwise(q: Tensor, log_q: Tensor, log_p: Tensor, kind: Divergence, beta: float) -> Tensor:
    """Per-outcome terms of the divergence between q and p; summed over outcomes by callers.

    ``jsd`` follows GKD: M = β·q + (1−β)·p, JSD_β = β·KL(q‖M) + (1−β)·KL(p‖M); β = 0 is taken
    as forward KL(q‖p) and β = 1 as reverse KL(p‖q), their scaled limits, as TRL does.
    """
    if kind == "jsd" and beta <= 0.0:
        kind = "forward"
    elif kind == "jsd" and beta >= 1.0:
        kind = "reverse"
    has_q = q > 0
    safe_log_q = torch.where(has_q, log_q, 0.0)  # 0·log 0 = 0, and no -inf reaches a product
    if kind == "forward":
        return torch.where(has_q, q * (safe_log_q - log_p), 0.0)
    p = log_p.exp()
    if kind == "reverse":
        # q = 0 under p > 0 is infinitely costly, as it should be; p = 0 costs nothing
        return torch.where(p > 0, p * (log_p - log_q), 0.0)
    if kind != "jsd":
        raise ValueError(f"unknown divergence {kind!r}; use forward, reverse or jsd")
    log_m = torch.logaddexp(
        torch.where(has_q, safe_log_q + math.log(beta), _NEG), log_p + math.log(1.0 - beta)
    )
    teacher_side = torch.where(has_q, q * (safe_log_q - log_m), 0.0)
    student_side = torch.where(p > 0, p * (log_p - log_m), 0.0)
    return beta * teacher_side + (1.0 - beta) * student_side


def _full(
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    kind: Divergence,
    beta: float = 0.5,
) -> Tensor:
    """Divergence summed over V and over positions where ``mask`` (B, T) is true."""
    log_p = torch.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    log_q = teacher_logprobs.float()
    per_position = _pointwise(log_q.exp(), log_q, log_p, kind, beta).sum(-1)  # (B, T)
    return torch.where(mask.bool(), per_position, 0.0).sum()


def forward_kl(student_logits: Tensor, teacher_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Σ over masked positions of KL(q‖p). Logits and log-probs (B, T, V), mask (B, T)."""
    return _full(student_logits, teacher_logprobs, mask, "forward")


def reverse_kl(student_logits: Tensor, teacher_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Σ over masked positions of KL(p‖q). Logits and log-probs (B, T, V), mask (B, T)."""
    return _full(student_logits, teacher_logprobs, mask, "reverse")


def generalized_jsd(
    student_logits: Tensor, teacher_logprobs: Tensor, mask: Tensor, beta: float = 0.5
) -> Tensor:
    """Σ over masked positions of GKD's JSD_β (Agarwal et al. 2024); symmetric at β = 0.5.

    β = 0 gives forward KL(q‖p), β = 1 reverse KL(p‖q). Shapes as :func:`forward_kl`.
    """
    return _full(student_logits, teacher_logprobs, mask, "jsd", beta)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sparse_kl(
    student_logprobs: Tensor,
    target_ids: Tensor,
    target_probs: Tensor,
    rest_prob: Tensor,
    kind: Divergence = "forward",
    beta: float = 0.5,
) -> Tensor:
    """Divergence per position (N,) between a sparse target and the student, over U ∪ {REST}.

    ``student_logprobs`` (N, V) log-softmax of the student (any float dtype); ``target_ids`` (N, K)
    long and ``target_probs`` (N, K) the target's mass on those ids (slots with prob 0 are padding:
    their id is ignored; ids with positive prob must be distinct in a row); ``rest_prob`` (N,) the
    target's mass on every other id. The student's REST mass is 1 − Σ_U p, computed as
    log1mexp(logsumexp(gathered)). Forward KL drops REST where q_REST = 0 (x·log x → 0); reverse
    KL floors q_REST at :data:`REST_FLOOR`; JSD needs neither. At K = V this is the full
    divergence; at K < V it is at most that (lumping outcomes never increases an f-divergence).
    """
    log_p = student_logprobs.gather(-1, target_ids).float()  # (N, K)
    q = target_probs.float().clamp_min(0.0)
    q_rest = rest_prob.float().clamp_min(0.0)
    in_u = q > 0
    log_u = torch.logsumexp(log_p.masked_fill(~in_u, _NEG), dim=-1)  # (N,) log Σ_U p
    log_p_rest = _log1mexp(log_u.clamp(max=MAX_LOG_U))
    if kind == "reverse" or (kind == "jsd" and beta >= 1.0):
        q_rest = q_rest.clamp_min(REST_FLOOR)
    q_all = torch.cat([q, q_rest[:, None]], dim=-1)  # (N, K+1)
    log_p_all = torch.cat([log_p, log_p_rest[:, None]], dim=-1)
    log_q_all = torch.log(q_all.clamp_min(torch.finfo(torch.float32).tiny))
    terms = _pointwise(q_all, log_q_all, log_p_all, kind, beta)
    active = torch.cat([in_u, torch.ones_like(q_rest, dtype=torch.bool)[:, None]], dim=-1)
    return torch.where(active, terms, 0.0).sum(-1)


def uld_sorted_l1(student_probs_tail: Tensor, teacher_probs_tail: Tensor) -> Tensor:
    """ULD distance (N,) (Boizard et al. 2024): L1 between both sides' probabilities sorted in
    descending order, the narrower side zero-padded. Inputs (N, A) and (N, B), any widths; it
    ignores token identity, so use it on mass that has no match, or as an ablation."""
    width = max(student_probs_tail.shape[-1], teacher_probs_tail.shape[-1])

    def sorted_padded(x: Tensor) -> Tensor:
        x = x.float().sort(dim=-1, descending=True).values
        return F.pad(x, (0, width - x.shape[-1]))

    return (sorted_padded(student_probs_tail) - sorted_padded(teacher_probs_tail)).abs().sum(-1)


@dataclass(frozen=True)
class TeacherTargets:
    """One teacher's sparse targets over a batch, P positions in all."""

    batch: Tensor
    """(P,) long: the example of each position."""
    time: Tensor
    """(P,) long: the index on the logits' T axis whose logits predict the target token."""
    ids: Tensor
    """(P, K) long student ids; padding slots have prob 0."""
    probs: Tensor
    """(P, K) the teacher's mass on ``ids``."""
    rest: Tensor
    """(P,) the teacher's mass on every other student id."""


class DistillLoss(NamedTuple):
    total: Tensor
    """α·CE + (1−α)·KD, connected to the logits; the one to call ``backward`` on."""
    ce: Tensor
    """Σ CE / n_b, detached, for logging."""
    kd: Tensor
    """Σ_m Σ w·KL_m / n_b, detached, for logging."""


def distill_loss(
    logits: Tensor,
    labels: Tensor,
    teachers: Sequence[TeacherTargets],
    weights: Tensor,
    n_tokens: float | Tensor,
    *,
    alpha: float = 0.5,
    kind: Divergence = "forward",
    beta: float = 0.5,
) -> DistillLoss:
    """``α·ΣCE/n_b + (1−α)·Σ_m Σ_positions w_{b,m}·D_m/n_b`` for student ``logits`` (B, T, V).

    ``labels`` (B, T) as in :func:`cross_entropy`; ``teachers`` M targets; ``weights`` (B, M) the
    fusion's per-example teacher weights (rows sum to 1; renormalise after dropping a teacher);
    ``n_tokens`` = n_b, the completion tokens of the whole optimiser step (all micro-batches and
    ranks), so that summing micro-batch losses gives the exact step loss. D is :func:`sparse_kl`.
    The log-softmax is computed once, in fp32, only on rows that a label or a target uses.
    """
    batch, steps, vocab = logits.shape
    if weights.shape != (batch, len(teachers)):
        raise ValueError(
            f"weights has shape {tuple(weights.shape)} but the batch has {batch} examples and "
            f"{len(teachers)} teachers; pass one weight per (example, teacher)"
        )
    flat_labels = labels.reshape(-1)
    has_kd = any(t.batch.numel() for t in teachers)
    if not (flat_labels != IGNORE).any() and not has_kd:
        zero = 0.0 * logits.sum()
        return DistillLoss(zero, zero.detach(), zero.detach())
    needed = flat_labels != IGNORE  # (B·T,)
    for t in teachers:
        needed[t.batch * steps + t.time] = True
    rows = needed.nonzero().squeeze(1)
    row_of = torch.full_like(flat_labels, -1)
    row_of[rows] = torch.arange(rows.numel(), device=rows.device)
    log_p = torch.log_softmax(logits.reshape(-1, vocab)[rows].float(), dim=-1)  # (R, V)
    labelled = flat_labels[rows] != IGNORE
    ce = -log_p[labelled].gather(-1, flat_labels[rows][labelled][:, None]).sum()
    kd = log_p.new_zeros(())
    for m, t in enumerate(teachers):
        if t.batch.numel() == 0:
            continue  # a teacher with no paired position adds nothing
        div = sparse_kl(log_p[row_of[t.batch * steps + t.time]], t.ids, t.probs, t.rest, kind, beta)
        kd = kd + (weights[t.batch, m].float() * div).sum()
    total = (alpha * ce + (1.0 - alpha) * kd) / n_tokens
    return DistillLoss(total, (ce / n_tokens).detach(), (kd / n_tokens).detach())
