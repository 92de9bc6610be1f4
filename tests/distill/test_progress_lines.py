"""In a log (stdout not a terminal) training prints a plain progress line every 5% of its steps,
where the live bar would print nothing: `avocado run recipe > run.log` shows how far it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from accelerate import Accelerator
from test_nonfinite_loss import _student
from train_job import make_items

from avocado_llm.config import TrainingConfig
from avocado_llm.distill.train import train

LINE = re.compile(
    r"^distill: step (\d+)/40 \(\d+%\) · loss \d+\.\d{4} · \d+:\d\d elapsed, ~(\d+:\d\d|\?) left$"
)


def test_training_into_a_log_prints_a_line_every_5_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tok = _student()
    cfg = TrainingConfig(steps=40, batch_size=2, device="cpu", warmup_steps=1)
    train(model, make_items(tok, n=8), cfg, pad_id=tok.pad_token_id, out_dir=tmp_path,
          accelerator=Accelerator(cpu=True))  # fmt: skip

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distill")]
    steps = [int(m.group(1)) for line in lines if (m := LINE.match(line))]
    assert len(steps) == len(lines), lines
    assert steps == list(range(2, 41, 2))  # 40 steps: every 2nd, the last included
