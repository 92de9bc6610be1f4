"""Distillation items (student tokens + per-teacher sparse targets) and their batches.

An item is one fused example in the student's tokenizer: the prompt in the student's chat
template, the target completion, and for every teacher with a fusion weight the sparse top-k
targets aligned onto the student's completion tokens (:mod:`avocado_llm.distill.align`).
Targets are built once, before training; a batch gathers them into flat tensors so the loss
never materialises a (B, T, V) target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from avocado_llm.distill.data import IGNORE, encode_chat


@dataclass
class TeacherTargets:
    """Sparse targets of one teacher on one item; positions index the completion tokens."""

    weight: float
    positions: torch.Tensor  # (P,) long
    ids: torch.Tensor  # (P, K) long
    probs: torch.Tensor  # (P, K) float
    rest: torch.Tensor  # (P,) float


@dataclass
class DistillItem:
    input_ids: list[int]
    labels: list[int]
    completion_start: int
    """Index of the first completion token in ``input_ids``."""
    teachers: list[TeacherTargets] = field(default_factory=list)
    group: str = ""
    """The task family, for balanced sampling."""

    @property
    def n_targets(self) -> int:
        """Completion tokens: what this item adds to the loss normaliser."""
        return len(self.input_ids) - self.completion_start


def encode_item(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], target: str
) -> DistillItem:
    enc = encode_chat(tokenizer, messages, target)
    start = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
    return DistillItem(enc.input_ids, enc.labels, start)


@dataclass
class DistillBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    kd_rows: torch.Tensor  # (P,) batch row of each KD position
    kd_cols: torch.Tensor  # (P,) sequence index of the logits that predict the target token
    kd_ids: torch.Tensor  # (P, K)
    kd_probs: torch.Tensor  # (P, K)
    kd_rest: torch.Tensor  # (P,)
    kd_weight: torch.Tensor  # (P,) the teacher's fusion weight for that item

    @property
    def n_tokens(self) -> int:
        """Completion tokens in the batch: the normaliser of every loss term."""
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device) -> DistillBatch:
        return DistillBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate_items(items: list[DistillItem], pad_id: int) -> DistillBatch:
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    rows, cols, kd_ids, kd_probs, kd_rest, kd_w = [], [], [], [], [], []
    k = max((t.ids.shape[1] for it in items for t in it.teachers if len(t.positions)), default=1)
    for b, it in enumerate(items):
        n = len(it.input_ids)
        ids[b, :n] = torch.tensor(it.input_ids)
        labels[b, :n] = torch.tensor(it.labels)
        mask[b, :n] = 1
        for t in it.teachers:
            if not len(t.positions):
                continue
            # Logits at index s predict token s + 1: completion token p is predicted at start+p-1.
            rows.append(torch.full_like(t.positions, b))
            cols.append(it.completion_start + t.positions - 1)
            pad = k - t.ids.shape[1]
            kd_ids.append(torch.nn.functional.pad(t.ids, (0, pad)))
            kd_probs.append(torch.nn.functional.pad(t.probs, (0, pad)))
            kd_rest.append(t.rest)
            kd_w.append(torch.full(t.positions.shape, t.weight, dtype=torch.float))
    if rows:
        cat = torch.cat
        kd = (cat(rows), cat(cols), cat(kd_ids), cat(kd_probs).float(), cat(kd_rest).float())
        weight = cat(kd_w)
    else:
        empty = torch.zeros(0, dtype=torch.long)
        kd = (empty, empty, torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k), torch.zeros(0))
        weight = torch.zeros(0)
    return DistillBatch(ids, mask, labels, *kd, weight)
