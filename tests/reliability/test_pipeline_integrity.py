"""Pipeline integrity (issue #18, points 15–19): a changed recipe never gets stale results, one
training per directory, no writing through planted links, no code run from a model directory,
checkpoint pointers kept inside the run, and bad values refused where they are checked.

One real harvest (the zoo's qwen-tiny, 8 prompts) and one real fusion serve the module; the
students are tiny (2 steps) so that every test trains for real in a second or two.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import Recipe, RecipeError, load_recipe
from avocado_llm.distill.pipeline import distill
from avocado_llm.fusion import fuse_recipe
from avocado_llm.harvest import HarvestError, HarvestStore, harvest, read_records
from avocado_llm.harvest.keys import record_key
from avocado_llm.run import distill_stage, eval_stage
from avocado_llm.teachers.base import SamplingParams, TeacherInfo

ROOT = Path(__file__).resolve().parents[2]


def write_recipe(tmp: Path, zoo: Path, **sections: dict) -> Path:
    data = {
        "name": "integrity",
        "output_dir": str(tmp / "runs"),
        "world": {"families": ["sorting"], "zoo_dir": str(zoo), "heldout_per_family": 4},
        "teachers": [{"name": "qwen-tiny", "zoo": True, "licence": "test licence"}],
        "harvest": {"prompts_per_family": 8, "max_new_tokens": 8, "top_logprobs": 3},
        "fusion": {"strategy": "single:qwen-tiny"},
        "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                    "intermediate_size": 32, "vocab_size": 400},
        "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1,
                     "device": "cpu"},
        "eval": {"heldout_per_family": 4, "max_new_tokens": 8, "baselines": []},
    }  # fmt: skip
    for section, fields in sections.items():
        data[section] = {**data.get(section, {}), **fields}
    path = tmp / "integrity.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe whose harvest (real, qwen-tiny) and fusion are done; returns the recipe file."""
    tmp = tmp_path_factory.mktemp("integrity")
    path = write_recipe(tmp, ROOT / "zoo")
    recipe = load_recipe(path)
    import asyncio

    assert asyncio.run(harvest(recipe, device="cpu", progress=False)).ok
    fuse_recipe(recipe, "single:qwen-tiny", device="cpu", reuse=True)
    return path


def recipe_with(path: Path, *overrides: str) -> Recipe:
    return load_recipe(path, list(overrides))


def fresh_copy(path: Path, tmp: Path) -> Path:
    """The fused run copied to ``tmp`` (harvest and fusion), so that no two tests share a
    student."""
    recipe = load_recipe(path)
    data = yaml.safe_load(path.read_text())
    data["output_dir"] = str(tmp / "runs")
    shutil.copytree(recipe.run_dir / "harvest", tmp / "runs" / recipe.name / "harvest")
    shutil.copytree(recipe.run_dir / "fusion", tmp / "runs" / recipe.name / "fusion")
    out = tmp / "integrity.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


# --- 15: stale results ------------------------------------------------------------------------


def test_changed_recipe_retrains_nothing_silently_and_reevaluates(
    fused_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fresh_copy(fused_run, tmp_path)
    recipe = recipe_with(path)
    out = recipe.run_dir / "student"
    victims = {}
    out.mkdir(parents=True)
    for name in ("README.md", "loss.jsonl", "loss.png", "config.json"):  # 17: planted links
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious\n")
        (out / name).symlink_to(victim)
        victims[name] = victim
    distill_stage(recipe, "single:qwen-tiny", out)
    eval_dir = recipe.run_dir / "eval"
    eval_dir.mkdir()
    victims["accuracy.png"] = tmp_path / "victim-accuracy.png"
    victims["accuracy.png"].write_text("precious\n")
    (eval_dir / "accuracy.png").symlink_to(victims["accuracy.png"])
    models = {"student": (out, "student")}
    first = eval_stage(recipe, models, "cpu")["models"]["student"]
    assert all(v.read_text() == "precious\n" for v in victims.values())
    planted = [out / name for name in victims if name != "accuracy.png"]
    assert not any(p.is_symlink() for p in [*planted, eval_dir / "accuracy.png"])

    capsys.readouterr()
    distill_stage(recipe, "single:qwen-tiny", out)  # same recipe: reused
    again = eval_stage(recipe, models, "cpu")["models"]["student"]
    assert again["evaluated_at"] == first["evaluated_at"]
    assert "already trained" in capsys.readouterr().err

    changed = recipe_with(path, "training.steps=3", "student.hidden_size=32")
    with pytest.raises(RuntimeError) as refused:
        distill_stage(changed, "single:qwen-tiny", out)
    message = str(refused.value)
    assert "training.steps: 2 → 3" in message and "student.hidden_size: 16 → 32" in message
    assert "--force" in message

    distill_stage(changed, "single:qwen-tiny", out, force=True)
    meta = json.loads((out / "avocado.json").read_text())
    assert meta["fingerprint"]["student.hidden_size"] == 32
    steps = [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    capsys.readouterr()
    redone = eval_stage(changed, models, "cpu")["models"]["student"]
    assert "evaluating again" in capsys.readouterr().err
    assert redone["params"] != first["params"]
    assert redone["fingerprint"]["input:model"] != first["fingerprint"]["input:model"]


def test_resume_with_changed_settings_is_refused(fused_run: Path, tmp_path: Path) -> None:
    path = fresh_copy(fused_run, tmp_path)
    recipe = recipe_with(path, "training.steps=4")
    out = recipe.run_dir / "student"
    distill(recipe, out=out, stop_after=2)
    step2 = out / "checkpoints" / "step-0000002"
    before = {p: p.read_bytes() for p in step2.rglob("*") if p.is_file()}

    for override, expected in [
        ("training.learning_rate=0.01", "training.learning_rate: 0.001 → 0.01"),
        ("student.hidden_size=32", "student.hidden_size: 16 → 32"),
    ]:
        with pytest.raises(RuntimeError, match="cannot resume") as refused:
            distill(recipe_with(path, "training.steps=4", override), out=out, resume=True)
        assert expected in str(refused.value) and "--force" in str(refused.value)

    with pytest.raises(RuntimeError, match=r"--resume.*--force"):  # no silent overwrite
        distill(recipe, out=out)
    assert {p: p.read_bytes() for p in step2.rglob("*") if p.is_file()} == before

    # Fields that do not change the model may change on resume.
    distill(recipe_with(path, "training.steps=4", "training.checkpoint_every=3"), out=out,
            resume=True)  # fmt: skip
    steps = [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_teacher_revision_covers_every_model_file_and_the_template(tmp_path: Path) -> None:
    from avocado_llm.teachers.hf import weights_revision

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, weights in ((a, b"one"), (b, b"two")):
        folder.mkdir()
        (folder / "pytorch_model.bin").write_bytes(weights)
        (folder / "config.json").write_text("{}")
    assert weights_revision(a) != weights_revision(b)
    (b / "pytorch_model.bin").write_bytes(b"one")
    assert weights_revision(a) == weights_revision(b)
    (b / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    assert weights_revision(a) != weights_revision(b)
    assert weights_revision(a, "{{ messages }}") != weights_revision(a)
    params, messages = SamplingParams(), [{"role": "user", "content": "hi"}]
    keys = {
        record_key(TeacherInfo("t", "m", weights_revision(a, template), ""), messages, params, 0)
        for template in (None, "A {{ messages }}", "B {{ messages }}")
    }
    assert len(keys) == 3  # a chat_template override is part of every record key


def test_fusion_leaves_out_records_of_other_harvest_settings(fused_run: Path) -> None:
    from avocado_llm.fusion import recipe_records

    recipe = recipe_with(fused_run)
    table = read_records(recipe.harvest_dir)
    assert recipe_records(recipe, table).num_rows == table.num_rows == 8
    for override in ("harvest.temperature=0.7", "harvest.prompts_per_family=4"):
        changed = recipe_with(fused_run, override)
        assert recipe_records(changed, table).num_rows < 8


# --- 16: one training per directory ------------------------------------------------------------


def test_a_second_distill_into_the_same_directory_is_refused(
    fused_run: Path, tmp_path: Path
) -> None:
    path = fresh_copy(fused_run, tmp_path)
    recipe = recipe_with(path)
    out = recipe.run_dir / "student"
    out.mkdir(parents=True)
    with (out / ".lock").open("a") as held:  # another distill holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another distill is training into"):
            distill(recipe, out=out)
    assert not (out / "loss.jsonl").exists() and not (out / "checkpoints").exists()


# --- 17: links in the run directory ---------------------------------------------------------


def test_harvest_lock_and_failure_log_links_are_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    root = tmp_path / "harvest"
    root.mkdir()
    (root / ".lock").symlink_to(victim)
    with pytest.raises(HarvestError, match="symbolic link"):
        HarvestStore(root, "r")
    (root / ".lock").unlink()
    (root / "failures.jsonl").symlink_to(victim)
    store = HarvestStore(root, "r")
    try:
        with pytest.raises(RuntimeError, match="symbolic link"):
            store.record_failures("t", [("k", "p", 0)], "boom")
    finally:
        store.close()
    assert victim.read_text() == "precious\n"


# --- 18: no code from a model directory --------------------------------------------------------


def custom_code_model(tmp: Path) -> tuple[Path, Path]:
    """A model directory whose config asks for its own Python code, which would leave a
    marker file if it ever ran."""
    model, marker = tmp / "custom", tmp / "code-ran"
    model.mkdir()
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (model / "configuration_evil.py").write_text(payload)
    (model / "modeling_evil.py").write_text(payload)
    (model / "tokenization_evil.py").write_text(payload)
    (model / "config.json").write_text(json.dumps({
        "model_type": "evil",
        "architectures": ["EvilForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
            "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
        },
    }))  # fmt: skip
    (model / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "EvilTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
    }))  # fmt: skip
    return model, marker


def test_eval_never_runs_a_model_directorys_code(
    fused_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``echo y | avocado eval --model DIR``: transformers' "run this code?" prompt would read
    the "y"; the answer must never be asked for."""
    from avocado_llm.cli import main

    model, marker = custom_code_model(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    out = tmp_path / "eval"
    argv = ["eval", str(fused_run), "--model", str(model), "--role", "baseline", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "trust_remote_code" in err


def test_teacher_and_student_loaders_never_run_a_model_directorys_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avocado_llm.config import StudentConfig
    from avocado_llm.distill.student import build_student
    from avocado_llm.teachers.hf import LocalTeacher

    model, marker = custom_code_model(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    with pytest.raises(Exception, match="trust_remote_code"):  # transformers' own error
        LocalTeacher("evil", model, device="cpu")
    with pytest.raises(Exception, match="trust_remote_code"):
        build_student(StudentConfig(init_from=model))
    assert not marker.exists()


# --- 19: checkpoint pointers, RNG pickles, negative usage, vocabulary size --------------------


@pytest.fixture
def paused(fused_run: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A training stopped after step 2 of 4: (recipe file, student directory)."""
    path = fresh_copy(fused_run, tmp_path)
    recipe = recipe_with(path, "training.steps=4")
    out = recipe.run_dir / "student"
    distill(recipe, out=out, stop_after=2)
    yield path, out


def test_latest_checkpoint_pointer_stays_in_the_run(
    paused: tuple[Path, Path], tmp_path: Path
) -> None:
    path, out = paused
    elsewhere = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(out / "checkpoints" / "step-0000002", elsewhere)
    pointer = out / "checkpoints" / "latest.json"
    rel = os.path.relpath(elsewhere, pointer.parent)
    for latest in ({"step": 2, "path": rel}, {"step": -1, "path": "step-0000002"},
                   {"step": 2, "path": "step-0000002/../../../../elsewhere/ckpt"}):  # fmt: skip
        pointer.write_text(json.dumps(latest))
        with pytest.raises(ValueError, match="must name a step-NNNNNNN folder"):
            distill(recipe_with(path, "training.steps=4"), out=out, resume=True)
    (out / "checkpoints" / "step-0000002").rename(out / "checkpoints" / "moved")
    (out / "checkpoints" / "step-0000002").symlink_to(elsewhere)
    pointer.write_text(json.dumps({"step": 2, "path": "step-0000002"}))
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        distill(recipe_with(path, "training.steps=4"), out=out, resume=True)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_rng_pickle_is_refused_and_reported(
    paused: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, out = paused
    marker = tmp_path / "pickle-ran"
    rng = out / "checkpoints" / "step-0000002" / "random_states_0.pkl"
    rng.write_bytes(pickle.dumps(_Exploit(marker)))
    with caplog.at_level(logging.WARNING, logger="avocado.distill"):
        distill(recipe_with(path, "training.steps=4"), out=out, resume=True)
    assert not marker.exists()
    warned = [r.getMessage() for r in caplog.records if "random state" in r.getMessage()]
    assert warned and str(rng) in warned[0]


def test_the_store_refuses_negative_or_huge_usage(tmp_path: Path) -> None:
    from avocado_llm.harvest import record_row
    from avocado_llm.teachers import Completion
    from avocado_llm.world.tasks import Example

    info = TeacherInfo("t", "m", "sha256:x", "l")
    example = Example(id="p", family="sorting", split="train",
                      messages=[{"role": "user", "content": "q"}], answer="a")  # fmt: skip
    store = HarvestStore(tmp_path / "harvest", "r")
    try:
        for usage in ({"prompt_tokens": -5}, {"completion_tokens": 3_000_000_000}):
            answer = replace(Completion(text="a", finish_reason="stop"), **usage)
            row = record_row("k", example, info, SamplingParams(), 0, answer, datetime.now(UTC))
            with pytest.raises(HarvestError, match=next(iter(usage))):
                store.write("t", [row])
    finally:
        store.close()
    assert read_records(tmp_path / "harvest").num_rows == 0


def test_a_too_small_student_vocabulary_fails_the_recipe_check(tmp_path: Path) -> None:
    from avocado_llm.distill.student import build_student

    path = write_recipe(tmp_path, ROOT / "zoo")
    with pytest.raises(RecipeError, match=r"student\.vocab_size"):
        load_recipe(path, ["student.vocab_size=300"])
    from avocado_llm.config.student import MIN_STUDENT_VOCAB

    with pytest.raises(RecipeError, match=r"student\.vocab_size"):
        load_recipe(path, [f"student.vocab_size={MIN_STUDENT_VOCAB - 1}"])
    recipe = load_recipe(path, [f"student.vocab_size={MIN_STUDENT_VOCAB}"])
    _, tok = build_student(recipe.student)  # char_bpe: exactly the fixed part, nothing learnt
    assert len(tok) == MIN_STUDENT_VOCAB
    small = replace(recipe.student, vocab_size=300, tokenizer_type="unigram")
    with pytest.raises(Exception, match="not large enough"):  # what the check now prevents
        build_student(small)
