"""Crash safety: ``avocado harvest`` interrupted by Ctrl-C once and killed with SIGKILL at random
moments, then run to the end, leaves exactly one record per (prompt, teacher, sample) and a
manifest that agrees with the files."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from avocado_llm.config import load_recipe
from avocado_llm.harvest import harvest_prompts, read_records, status

KILLS = 3


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("data/*/part-*.parquet"))


def _interruptible() -> None:
    """In the child: Ctrl-C as in a terminal. A shell starts background jobs (`make test &`) with
    SIGINT ignored, the child would inherit that, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(recipe: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "avocado_llm.cli", "harvest", str(recipe), "--device", "cpu"]
    return subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=_interruptible
    )


def wait_for_a_new_shard(proc: subprocess.Popen[bytes], out: Path, log: Path) -> None:
    before = len(shards(out))
    deadline = time.monotonic() + 90
    while len(shards(out)) <= before:
        assert proc.poll() is None, f"harvest exited early: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no shard written in 90 s"
        time.sleep(0.05)


def assert_manifest_matches_files(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix(): p for p in shards(out)}
    assert sorted(s["path"] for s in manifest["shards"]) == sorted(files)
    for shard in manifest["shards"]:
        assert hashlib.sha256(files[shard["path"]].read_bytes()).hexdigest() == shard["sha256"]
    assert manifest["records"] == sum(s["rows"] for s in manifest["shards"])


def test_killed_and_restarted_harvest_ends_with_each_record_once(write_recipe, tmp_path) -> None:
    path = write_recipe(
        families=("arithmetic", "reverse", "counting"), prompts_per_family=200, batch_size=4
    )
    recipe = load_recipe(path)
    out = recipe.run_dir / "harvest"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    for attempt in range(1 + KILLS):
        log = tmp_path / f"run-{attempt}.log"
        proc = start(path, log)
        wait_for_a_new_shard(proc, out, log)
        time.sleep(rng.uniform(0.0, 0.5))  # early enough that work is left on a quiet machine
        if attempt == 0:  # Ctrl-C: a clean stop that keeps what was written
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
            assert "run the same command to resume" in log.read_text()
            assert_manifest_matches_files(out)
        else:
            proc.kill()
            assert proc.wait(timeout=60) == -signal.SIGKILL, f"seed {seed}: finished too early"

    partial = read_records(out).num_rows
    log = tmp_path / "final.log"
    final = subprocess.run(
        [sys.executable, "-m", "avocado_llm.cli", "harvest", str(path), "--device", "cpu"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, log.read_text()[-2000:]

    prompts = {ex.id for ex in harvest_prompts(recipe)}
    records = read_records(out)
    assert 0 < partial < records.num_rows == 2 * len(prompts) == 1200, f"seed {seed}"
    raw_rows = sum(s["rows"] for s in json.loads((out / "manifest.json").read_text())["shards"])
    assert raw_rows == records.num_rows, f"seed {seed}: a key was written twice"
    ids = {(r["prompt_id"], r["teacher"], r["sample_index"]) for r in records.to_pylist()}
    assert len(ids) == records.num_rows
    for teacher in ("qwen-tiny", "gemma-tiny"):
        assert {r["prompt_id"] for r in records.to_pylist() if r["teacher"] == teacher} == prompts
    assert_manifest_matches_files(out)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert all(s.failed == 0 and s.records == len(prompts) for s in status(out).values())
