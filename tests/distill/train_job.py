"""A small distillation job run by the training tests in a subprocess (and under accelerate).

usage: python train_job.py OUT_DIR STEPS [--resume]
Builds a tiny student and deterministic items (tiny-world prompts, gold targets, synthetic
sparse KD targets), trains, and writes ``OUT_DIR/result-<rank>.json`` (final loss, weights sum).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from avocado_llm.config import StudentConfig, TrainingConfig
from avocado_llm.distill.batches import DistillItem, TeacherTargets, encode_item
from avocado_llm.distill.student import build_student
from avocado_llm.distill.train import train
from avocado_llm.world import tasks


def make_items(tok, n: int = 64) -> list[DistillItem]:
    gen = torch.Generator().manual_seed(0)
    items = []
    for ex in tasks.generate(["arithmetic", "sorting"], "train", n // 2, seed=0):
        item = encode_item(tok, ex.messages, ex.answer)
        m = item.n_targets
        positions = torch.arange(1, m)
        gold = torch.tensor(item.input_ids[item.completion_start + 1 :])
        others = torch.randint(len(tok), (m - 1, 3), generator=gen)
        ids = torch.cat([gold[:, None], others], dim=1)
        probs = torch.tensor([0.7, 0.1, 0.05, 0.05]).expand(m - 1, 4).clone()
        rest = torch.full((m - 1,), 0.1)
        item.teachers.append(TeacherTargets(1.0, positions, ids, probs, rest))
        items.append(item)
    return items


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    resume = "--resume" in sys.argv
    cfg = TrainingConfig(
        steps=steps, batch_size=8, grad_accum=2, learning_rate=3e-3, warmup_steps=3,
        checkpoint_every=4, device="cpu", alpha_ce=0.5,
    )  # fmt: skip
    student = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, vocab_size=320)  # fmt: skip
    model, tok = build_student(student, seed=0, corpus=[e.prompt for e in tasks.generate(
        ["arithmetic", "sorting"], "train", 200)] + ["0 1 2 3 4 5 6 7 8 9"])  # fmt: skip
    acc = Accelerator(cpu=True)
    history = train(model, make_items(tok), cfg, pad_id=tok.pad_token_id, out_dir=out,
                    resume=resume, accelerator=acc)  # fmt: skip
    weights = sum(p.double().sum().item() for p in acc.unwrap_model(model).parameters())
    result = {"losses": [h.loss for h in history], "weights": weights}
    (out / f"result-{acc.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
