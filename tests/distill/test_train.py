"""The distillation loop: exact resume after kill -9, and 2-process data parallelism on CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

JOB = Path(__file__).with_name("train_job.py")
STEPS = 24


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(JOB), str(out), str(STEPS), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _loss_log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]


def test_killed_and_resumed_run_ends_at_the_same_loss(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    done = _run(straight)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = _loss_log(straight)
    assert len(expected) == STEPS
    assert expected[-1]["loss"] < expected[0]["loss"]  # it learns

    killed = tmp_path / "killed"
    rng = random.Random(1)
    for _ in range(2):  # kill -9 twice at a random moment after a checkpoint exists
        proc = subprocess.Popen(
            [sys.executable, str(JOB), str(killed), str(STEPS), "--resume"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        latest = killed / "checkpoints" / "latest.json"
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = _run(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = _loss_log(killed)
    assert [r["step"] for r in got] == list(range(STEPS))  # no step lost or logged twice
    assert abs(got[-1]["loss"] - expected[-1]["loss"]) <= 1e-5
    for out in (straight, killed):  # the newest two checkpoints stay (keep_checkpoints: 2)
        kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
        assert kept == ["step-0000020", "step-0000024"], kept
    a = json.loads((straight / "result-0.json").read_text())["weights"]
    b = json.loads((killed / "result-0.json").read_text())["weights"]
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a))


def test_two_processes_with_accelerate_launch(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On a machine without GPUs, --multi_gpu starts torch.distributed with gloo (MULTI_CPU).
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           str(JOB), str(out), str(STEPS)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the reduced loss is the same on both
    assert abs(ranks[0]["weights"] - ranks[1]["weights"]) < 1e-6  # replicas stay in sync
    losses = ranks[0]["losses"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_old_checkpoints_go_but_never_the_latest(tmp_path: Path) -> None:
    from avocado_llm.distill.checkpoints import prune_checkpoints

    for step in (4, 8, 12, 16):
        (tmp_path / f"step-{step:07d}").mkdir()
    (tmp_path / "step-0000016" / "model.bin").write_bytes(b"x")
    (tmp_path / "notes").mkdir()  # not a checkpoint: left alone
    assert prune_checkpoints(tmp_path, 2, "step-0000016") == ["step-0000004", "step-0000008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step-0000012", "step-0000016"]
    # the pointer still names an older one (a crash before it moved): that one stays too
    (tmp_path / "step-0000020").mkdir()
    assert prune_checkpoints(tmp_path, 1, "step-0000016") == ["step-0000012"]
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000016", "step-0000020"]
