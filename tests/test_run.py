"""`avocado run` end to end on a small recipe: every stage, then a second run that skips them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, zoo_dir: Path) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    data["output_dir"] = str(tmp_path / "runs")
    data["world"].update(
        families=["sorting", "units"], unverified=["units"], zoo_dir=str(zoo_dir),
        train_per_family=40, heldout_per_family=12,
    )  # fmt: skip
    data["harvest"].update(prompts_per_family=40, max_new_tokens=16, batch_size=40)
    data["training"].update(steps=12, batch_size=8, checkpoint_every=6, warmup_steps=2)
    data["eval"].update(heldout_per_family=12, max_new_tokens=16, baselines=["single:qwen-tiny"])
    path = tmp_path / "mini.yaml"
    path.write_text("# Run: avocado run mini.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _avocado(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "avocado_llm.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def test_run_every_stage_then_skip_them(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    first = _avocado("run", str(recipe))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    report = json.loads((run / "eval" / "report.json").read_text())
    roles = {name: m["role"] for name, m in report["models"].items()}
    assert roles == {
        "gemma-tiny": "teacher",
        "gpt-oss-tiny": "teacher",
        "qwen-tiny": "teacher",
        "student": "student",
        "baseline-single-qwen-tiny": "baseline",
    }
    for m in report["models"].values():
        assert 0.0 <= m["overall"] <= 1.0
        assert {f: e["n"] for f, e in m["families"].items()} == {"sorting": 12, "units": 12}
    assert report["models"]["student"]["params"] <= 0.5 * min(
        report["models"][t]["params"] for t in ("gemma-tiny", "gpt-oss-tiny", "qwen-tiny")
    )
    student = run / "student"
    meta = json.loads((student / "avocado.json").read_text())
    assert meta["fusion"] == "verify" and meta["items"]["kd_positions"] > 0
    assert (student / "model.safetensors").exists() and (student / "loss.png").exists()
    assert "Held-out exact match" in first.stdout
    for page in ("report.md", "report.html"):
        assert (run / "eval" / page).stat().st_size > 0

    made = {
        path: path.stat().st_mtime_ns
        for pattern in ("harvest/**/*.parquet", "student/*.safetensors", "fused/*")
        for path in run.glob(pattern)
    }
    assert {p.suffix for p in made} >= {".parquet", ".safetensors"}
    second = _avocado("run", str(recipe))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already trained" in second.stderr and "up to date" in second.stderr
    assert json.loads((run / "eval" / "report.json").read_text())["models"].keys() == roles.keys()
    # it reused the harvest, the fused file and the student: not one of their files was rewritten
    assert {path: path.stat().st_mtime_ns for path in made} == made

    # One paid call to the served student, with the official openai client.
    sold = _avocado("demo", str(recipe), "--prompt", "Sort: 3 1 2")
    assert sold.returncode == 0, sold.stderr[-3000:]
    charge = re.search(r"charge:\s+\$([0-9.]+)\s+balance: \$([0-9.]+)", sold.stdout)
    assert charge, sold.stdout
    spent, left = float(charge.group(1)), float(charge.group(2))
    assert spent > 0 and abs(left - (5 - spent)) < 1e-9  # the demo account starts with $5

    # A partial student (checkpoints, no artifact) is resumed, not retrained from scratch.
    shutil.rmtree(student / "checkpoints" / "step-0000012")
    (student / "avocado.json").unlink()
    (student / "checkpoints" / "latest.json").write_text(
        json.dumps({"step": 6, "path": "step-0000006"})
    )
    third = _avocado("distill", str(recipe), "--resume")
    assert third.returncode == 0, third.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (student / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(12))

    # Stopped while writing its first checkpoint (a full disk): a folder, no latest.json yet.
    # `avocado run` trains it again from step 0 instead of refusing the directory.
    for entry in (student / "checkpoints").glob("step-*"):
        shutil.rmtree(entry)
    (student / "checkpoints" / "latest.json").unlink()
    (student / "checkpoints" / "step-0000006").mkdir()
    (student / "checkpoints" / "step-0000006" / "model.bin").write_bytes(b"trunc")
    (student / "avocado.json").unlink()
    fourth = _avocado("run", str(recipe))
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert (student / "avocado.json").exists()
    steps = [json.loads(x)["step"] for x in (student / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(12))
    kept = sorted(p.name for p in (student / "checkpoints").glob("step-*"))
    assert kept == ["step-0000006", "step-0000012"]  # keep_checkpoints: 2


def test_ablations_reuse_the_harvest_of_another_run(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    ablations = tmp_path / "mini-ablations.yaml"
    ablations.write_text(
        "extends: mini.yaml\nname: mini-ablations\nharvest:\n  from_run: tiny\n"
        "eval:\n  baselines: [sft]\n"
    )
    early = _avocado("run", str(ablations))  # nothing to reuse yet: a clear error, no harvest
    assert early.returncode == 1 and "no harvest at" in early.stderr, early.stderr[-3000:]
    assert not (tmp_path / "runs" / "tiny" / "harvest").exists()

    assert _avocado("harvest", str(recipe)).returncode == 0
    done = _avocado("run", str(ablations))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "mini-ablations"
    assert not (run / "harvest").exists()
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["models"]["student"]["role"] == "student"
    assert report["models"]["baseline-sft"]["role"] == "baseline"
    meta = {
        name: json.loads((path / "avocado.json").read_text())
        for name, path in (("kd", run / "student"), ("sft", run / "baselines" / "sft"))
    }
    assert meta["kd"]["token_level_kd"] and not meta["sft"]["token_level_kd"]
    assert meta["kd"]["items"]["kd_positions"] > 0
    manifest = tmp_path / "runs" / "tiny" / "harvest" / "manifest.json"
    assert meta["kd"]["harvest_manifest_sha256"] == meta["sft"]["harvest_manifest_sha256"]
    assert manifest.exists()
