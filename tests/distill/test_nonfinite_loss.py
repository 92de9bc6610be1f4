"""Training refuses to go on with a NaN or infinite loss: it stops at that step, names it, and
leaves the weights as they were (no NaN update, no checkpoint of that step)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from train_job import make_items

from avocado_llm.config import StudentConfig, TrainingConfig
from avocado_llm.distill.student import build_student
from avocado_llm.distill.train import NonFiniteLoss, train
from avocado_llm.world import tasks

STUDENT = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                        intermediate_size=64, vocab_size=400)  # fmt: skip


def _student() -> tuple[torch.nn.Module, object]:
    corpus = [e.prompt for e in tasks.generate(["arithmetic", "sorting"], "train", 100)]
    return build_student(STUDENT, seed=0, corpus=[*corpus, "0 1 2 3 4 5 6 7 8 9"])


def test_a_nan_loss_stops_training_at_its_step_and_saves_nothing(tmp_path: Path) -> None:
    model, tok = _student()
    items = make_items(tok, n=8)
    cfg = TrainingConfig(steps=4, batch_size=2, checkpoint_every=1, device="cpu", warmup_steps=1)
    norm = next(p for name, p in model.named_parameters() if name.endswith("norm.weight"))
    with torch.no_grad():
        norm.fill_(math.nan)  # what a poisoned update would leave
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(NonFiniteLoss, match=r"stopped at step 0: the loss is nan") as error:
        train(model, items, cfg, pad_id=tok.pad_token_id, out_dir=tmp_path,
              accelerator=Accelerator(cpu=True))  # fmt: skip
    assert "harvest's log-probabilities" in str(error.value)
    assert isinstance(error.value, ValueError)  # `avocado distill` reports it and exits 1
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "loss.jsonl").read_text() == ""
    for name, p in model.named_parameters():  # no optimizer step ran
        assert torch.allclose(p.detach(), before[name], equal_nan=True), name


def test_nan_kd_targets_are_refused_before_the_first_step(tmp_path: Path) -> None:
    model, tok = _student()
    items = make_items(tok, n=8)
    items[3].teachers[0].probs[0, 0] = math.nan
    cfg = TrainingConfig(steps=2, batch_size=2, device="cpu")
    with pytest.raises(NonFiniteLoss, match=r"1 of 8 training examples .* example 3\)"):
        train(model, items, cfg, pad_id=tok.pad_token_id, out_dir=tmp_path,
              accelerator=Accelerator(cpu=True))  # fmt: skip
    assert not (tmp_path / "checkpoints").exists()
