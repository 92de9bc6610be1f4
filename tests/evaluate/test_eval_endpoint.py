"""A zoo teacher scored in this process and the same teacher scored through a real
OpenAI-compatible server on loopback give the same answers, example by example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from endpoint_server import EndpointOptions, serve_teacher

from avocado_llm.evaluate import ModelSource, evaluate_model, load_report
from avocado_llm.teachers.hf import LocalTeacher
from avocado_llm.world.corpus import count_params

KEY_ENV = "AVOCADO_TEST_EVAL_KEY"
KEY = "sk-eval-test-0123456789"


def _answers(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_and_endpoint_scores_are_the_same(
    make_recipe, zoo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = make_recipe(families=("arithmetic", "units"))
    local = evaluate_model(recipe, ModelSource(path=zoo_dir / "qwen-tiny"), n=20, device="cpu")
    assert local.name == "qwen-tiny" and local.entry["role"] == "teacher"
    assert local.entry["params"] == count_params(zoo_dir / "qwen-tiny")

    monkeypatch.setenv(KEY_ENV, KEY)
    teacher = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=1)
    with serve_teacher(teacher, EndpointOptions(api_key=KEY)) as server:
        source = ModelSource(
            url=server.base_url, served_model="qwen-tiny", api_key_env=KEY_ENV, concurrency=4
        )
        remote = evaluate_model(recipe, source, name="qwen-remote", role="teacher", n=20)
        assert server.requests == 40
        assert all(b["temperature"] == 0.0 and "logprobs" not in b for b in server.bodies)
        assert all(b["max_tokens"] == recipe.eval.max_new_tokens for b in server.bodies)

    mine, theirs = _answers(local.answers_path), _answers(remote.answers_path)
    assert len(mine) == len(theirs) == 40
    assert [(a["id"], a["answer"], a["correct"]) for a in mine] == [
        (a["id"], a["answer"], a["correct"]) for a in theirs
    ]
    assert {a["family"] for a in mine} == {"arithmetic", "units"}
    assert 0 < sum(bool(a["correct"]) for a in mine) < 40  # a test that can tell them apart

    report = load_report(recipe.run_dir / "eval")
    here, there = report["models"]["qwen-tiny"], report["models"]["qwen-remote"]
    assert there["params"] is None and there["source"] == f"{server.base_url}#qwen-tiny"
    assert here["overall"] == there["overall"]
    for family in ("arithmetic", "units"):
        a, b = here["families"][family], there["families"][family]
        assert (a["accuracy"], a["n"], a["ci95"]) == (b["accuracy"], b["n"], b["ci95"])
        assert a["tokens_per_s"] > 0 and b["tokens_per_s"] > 0
