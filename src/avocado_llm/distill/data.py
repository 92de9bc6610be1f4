"""Turn chat examples into token tensors for causal-LM training (loss on the answer only)."""

from __future__ import annotations

import torch

# Chat encoding lives in the local-model component (teachers score with it too); these names
# stay importable from here.
from avocado_llm.models.chat import IGNORE, Encoded, encode_chat, split_chat

__all__ = ["IGNORE", "Encoded", "collate", "encode_chat", "split_chat"]


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels``, all (B, T)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
