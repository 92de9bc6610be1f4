"""Records of ``data.sources`` belong to their source: an identical prompt in two sources gets
two answers (their keys and prompt ids name the source), the tiny world's keys stay what they
were, and a manifest rebuilt from the shards still knows each source's content hash."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import Recipe, load_recipe
from avocado_llm.harvest import HarvestError, harvest, read_records, record_key
from avocado_llm.teachers import SamplingParams, load_teacher
from avocado_llm.teachers.base import TeacherInfo

SAME = "What is 21 plus 13?"


def _recipe(tmp_path: Path, zoo_dir: Path) -> Recipe:
    (tmp_path / "sums.csv").write_text(f'question,answer\n"{SAME}",34\n"2 + 3 = ?",5\n')
    (tmp_path / "open.jsonl").write_text(json.dumps({"prompt": SAME}) + "\n")
    data = {
        "name": "same-prompt",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": [], "zoo_dir": str(zoo_dir)},
        "data": {
            "sources": [
                {"name": "sums", "path": "sums.csv", "prompt": "question",
                 "reference": "answer", "verifier": "number", "heldout_fraction": 0.0},
                {"name": "open", "path": "open.jsonl", "prompt": "prompt",
                 "heldout_fraction": 0.0},
            ]
        },
        "teachers": [{"name": "qwen-tiny", "zoo": True}],
        "harvest": {"max_new_tokens": 6, "top_logprobs": 2, "batch_size": 4},
    }  # fmt: skip
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_recipe(path)


def _harvest(recipe: Recipe) -> None:
    teachers = [load_teacher(t, recipe, "cpu") for t in recipe.teachers]
    summary = asyncio.run(harvest(recipe, teachers=teachers, progress=False))
    assert summary.ok


def test_an_identical_prompt_in_two_sources_gets_a_record_in_each(
    tmp_path: Path, zoo_dir: Path
) -> None:
    from avocado_llm.fusion import fuse_recipe, read_fused

    recipe = _recipe(tmp_path, zoo_dir)
    _harvest(recipe)
    records = read_records(recipe.run_dir / "harvest").to_pylist()
    same = [r for r in records if r["messages"][-1]["content"] == SAME]
    assert sorted(r["family"] for r in same) == ["open", "sums"]
    assert len({r["key"] for r in same}) == 2 and len({r["prompt_id"] for r in same}) == 2
    assert {r["family"]: r["gold"] for r in same} == {"sums": "34", "open": None}

    fused = fuse_recipe(recipe, "verify", note=lambda _: None)
    assert fused.report is not None
    assert fused.report.families["open"].total == 1  # its own prompt, fused label-free
    assert fused.report.families["sums"].total == 2
    assert {e.family for e in read_fused(fused.path) if e.messages[-1]["content"] == SAME} >= {
        "open"
    }


def test_a_tiny_world_key_is_what_it_was() -> None:
    """Keys without a source are byte for byte the old ones, so ``make demo`` resumes its
    harvest (a changed key would ask every teacher every prompt again)."""
    info = TeacherInfo(name="qwen-tiny", model="zoo/qwen-tiny", revision="sha256:abc", licence="x")
    params = SamplingParams(temperature=0.0, max_new_tokens=24, n=1, top_logprobs=20, seed=0)
    messages = [{"role": "user", "content": "What is 3 plus 4?"}]
    key = record_key(info, messages, params, 0)
    assert key == "ce549ce2e2e3a98d23580a5584487a7ddb229506c98e2d4ae543ddc65095bfc0"
    assert record_key(info, messages, params, 0, source="sums") != key


def test_a_rebuilt_manifest_still_knows_the_sources_hashes(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    out = recipe.run_dir / "harvest"
    _harvest(recipe)
    hashes = json.loads((out / "manifest.json").read_text())["sources"]
    (out / "manifest.json").unlink()  # lost: rebuilt from the shards when the store opens
    _harvest(recipe)
    assert json.loads((out / "manifest.json").read_text())["sources"] == hashes

    (out / "manifest.json").write_text("{not json")  # damaged: rebuilt too
    sums = recipe.data.sources[0].path
    sums.write_text(sums.read_text() + '"1 + 1 = ?",2\n')
    with pytest.raises(HarvestError, match=rf"sums: {hashes['sums']} → sha256:"):
        _harvest(recipe)
