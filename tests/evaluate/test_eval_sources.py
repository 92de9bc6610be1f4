"""Evaluation over the recipe's own prompt sources (issue #21): accuracy with n and a 95%
interval where a source has a verifier, a judged win / tie / loss of the student against each
teacher where it has none (both answer orders asked), and a fingerprint that covers the
sources' content."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from endpoint_server import EndpointOptions, serve_teacher

from avocado_llm.config import Recipe, load_recipe
from avocado_llm.evaluate import ModelSource, evaluate_model, load_report, write_report
from avocado_llm.evaluate.evaluation import eval_fingerprint, per_source, source_prompts
from avocado_llm.evaluate.judged import outcome, parse_verdict
from avocado_llm.evaluate.runner import evaluate_endpoint
from avocado_llm.teachers.base import Completion, SamplingParams, TeacherError, TeacherInfo
from avocado_llm.teachers.hf import LocalTeacher

ROWS = 24


def _write_sources(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    sums, chats = root / "sums.jsonl", root / "open.jsonl"
    sums.write_text(
        "".join(
            json.dumps({"question": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)}) + "\n"
            for a in range(ROWS)
        ),
        encoding="utf-8",
    )
    chats.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"Tell me about topic {i}."}]})
            + "\n"
            for i in range(ROWS)
        ),
        encoding="utf-8",
    )
    return sums, chats


def _recipe(tmp_path: Path, zoo_dir: Path, judge_url: str | None = None) -> Recipe:
    sums, chats = _write_sources(tmp_path / "data")
    eval_: dict[str, object] = {"heldout_per_family": 4, "max_new_tokens": 8, "batch_size": 8}
    if judge_url is not None:
        eval_ |= {"judge_url": judge_url, "judge_model": "qwen-tiny"}
    numbers = {"name": "sums", "path": str(sums), "prompt": "question", "reference": "answer"}
    numbers |= {"verifier": "number", "heldout_fraction": 0.5}
    chatty = {"name": "chats", "path": str(chats), "messages": "messages", "heldout_fraction": 0.5}
    data = {
        "name": "eval-sources",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": [], "zoo_dir": str(zoo_dir)},
        "data": {"sources": [numbers, chatty]},
        "teachers": [{"name": "gemma-tiny", "zoo": True}],
        "eval": eval_,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_recipe(path)


def test_sources_are_scored_and_open_ones_judged_in_both_orders(
    tmp_path: Path, zoo_dir: Path
) -> None:
    judge = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=16)
    with serve_teacher(judge, EndpointOptions(model="qwen-tiny")) as server:
        recipe = _recipe(tmp_path, zoo_dir, judge_url=server.base_url)
        out = tmp_path / "eval"
        evaluate_model(recipe, ModelSource(path=zoo_dir / "gemma-tiny"), out=out, device="cpu")
        assert server.requests == 0  # no student yet: nothing to judge
        student = ModelSource(path=zoo_dir / "qwen-tiny")
        evaluate_model(recipe, student, name="student", role="student", out=out, device="cpu")
        asked = server.requests
    report = load_report(out)
    for name in ("gemma-tiny", "student"):
        sums = report["models"][name]["families"]["sums"]
        assert sums["n"] == 4 and 0.0 <= sums["accuracy"] <= 1.0
        assert sums["ci95"][0] <= sums["accuracy"] <= sums["ci95"][1]
        assert "chats" not in report["models"][name]["families"]  # no verifier: judged
    counts = report["judged"]["chats"]["gemma-tiny"]
    assert counts["n"] == 4 and counts["win"] + counts["tie"] + counts["loss"] == counts["n"]
    assert counts["student"] == "student"
    # the judge is also checked on the sums where exactly one of the two answers is right
    checks = report.get("judge_checks", {}).get("sums", {}).get("gemma-tiny", {"n": 0})
    assert asked == 2 * (counts["n"] + checks["n"])  # both orders of every pair
    if checks["n"]:
        assert 0.0 <= report["judge_agreement"]["sums"] <= 1.0
    files = write_report(out)
    html = files.html.read_text(encoding="utf-8")
    assert '<table id="judged">' in html and "gemma-tiny" in html.split('id="judged"')[1]
    assert "## Judged sources" in files.markdown.read_text(encoding="utf-8")
    answers = [json.loads(line) for line in (out / "answers" / "student.jsonl").open()]
    assert {a["family"] for a in answers} == {"sums", "chats"}


def test_the_fingerprint_covers_the_sources_content(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    model = ModelSource(path=zoo_dir / "gemma-tiny")
    before = eval_fingerprint(recipe, model, 4)
    assert before["data.sources.sums"]["verifier"] == "number"
    assert before["verifiers"] == {"number": 2}  # scores of number version 1 are made again
    with recipe.data.sources[1].path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "One more."}]}) + "\n")
    after = eval_fingerprint(recipe, model, 4)
    assert after["input:source:chats"] != before["input:source:chats"]
    assert after["input:source:sums"] == before["input:source:sums"]
    recipe.eval.judge_rubric = "Prefer the shorter answer."
    assert (
        eval_fingerprint(recipe, model, 4)["eval.judge"]["rubric"] != before["eval.judge"]["rubric"]
    )


def test_a_tiny_world_recipe_keeps_its_fingerprint(make_recipe, zoo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fingerprint = eval_fingerprint(make_recipe(), ModelSource(path=zoo_dir / "qwen-tiny"), 5)
    keys = {"input:model", "seed", "world.families", "n_per_family", "eval.max_new_tokens"}
    assert set(fingerprint) == keys


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("A", "B", "win"),  # the student's answer chosen in both orders
        ("B", "A", "loss"),
        ("A", "A", "tie"),  # always the first position: position bias, no preference
        ("tie", "B", "win"),
        ("I cannot tell", "tie.", "tie"),
    ],
)
def test_both_orders_cancel_position_bias(first: str, second: str, expected: str) -> None:
    assert outcome(parse_verdict(first), parse_verdict(second)) == expected


def test_verdicts_are_read_strictly() -> None:
    assert parse_verdict(" B.") == "B"
    assert parse_verdict("a good answer") == "tie"  # an article, not a verdict
    assert parse_verdict("Answer A is better") == "A"
    assert parse_verdict("TIE") == "tie"


def test_a_failing_judge_leaves_the_student_unevaluated(tmp_path: Path, zoo_dir: Path) -> None:
    """The judge answers every request with 400: the student's entry is not written, so the
    next `avocado run` evaluates and judges it again instead of finding it up to date."""
    judge = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=16)
    with serve_teacher(judge, EndpointOptions(model="qwen-tiny", always_400=True)) as server:
        recipe = _recipe(tmp_path, zoo_dir, judge_url=server.base_url)
        out = tmp_path / "eval"
        evaluate_model(recipe, ModelSource(path=zoo_dir / "gemma-tiny"), out=out, device="cpu")
        student = ModelSource(path=zoo_dir / "qwen-tiny")
        with pytest.raises(TeacherError):
            evaluate_model(recipe, student, name="student", role="student", out=out, device="cpu")
        assert server.requests > 0
    report = load_report(out)
    assert set(report["models"]) == {"gemma-tiny"} and "judged" not in report


def test_heldout_per_source_caps_each_source(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    recipe.eval.heldout_per_source = 3
    prompts = source_prompts(recipe, per_source(recipe, 100))
    assert Counter(p.family for p in prompts) == {"sums": 3, "chats": 3}
    assert all(p.verify is not None for p in prompts if p.family == "sums")
    assert all(p.verify is None and p.answer is None for p in prompts if p.family == "chats")


class Restater:
    """A model that answers the way real chat models do: it restates the question ("There are
    7000 grams in 7 kilograms."), right when ``right`` else with the question's number only."""

    info = TeacherInfo("restater", "restater", "test", "test licence")

    def __init__(self, right: bool) -> None:
        self.right = right

    async def generate(self, conversations, params: SamplingParams) -> list[list[Completion]]:  # type: ignore[no-untyped-def]
        answers = []
        for chat in conversations:
            kilos = int(re.findall(r"\d+", chat[-1]["content"])[-1])
            grams = 1000 * kilos if self.right else kilos
            answers.append([Completion(f"There are {grams} grams in {kilos} kilograms.", "stop")])
        return answers

    async def aclose(self) -> None:
        return None


def test_the_evaluation_gives_the_source_verifier_the_question(tmp_path: Path) -> None:
    """A source scored by ``number`` with the prompt's question (its last user turn, the
    system message aside): the restated right answer counts, the echo of the question's number
    does not."""
    rows = tmp_path / "grams.jsonl"
    questions = [{"q": f"How many grams are in {k} kilograms?", "a": str(1000 * k)}
                 for k in range(2, 30)]  # fmt: skip
    rows.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    source = {"name": "grams", "path": str(rows), "prompt": "q", "reference": "a",
              "verifier": "number", "heldout_fraction": 0.5, "system": "Be brief."}  # fmt: skip
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "name": "grams", "output_dir": str(tmp_path / "runs"), "world": {"families": []},
        "data": {"sources": [source]}, "teachers": [{"name": "qwen-tiny", "zoo": True}],
    }))  # fmt: skip
    prompts = source_prompts(load_recipe(recipe_file), 6)
    assert len(prompts) == 6 and prompts[0].messages[0]["role"] == "system"
    assert prompts[0].prompt == prompts[0].messages[-1]["content"]  # the question
    for right, accuracy in [(True, 1.0), (False, 0.0)]:
        result = asyncio.run(evaluate_endpoint(Restater(right), prompts))
        assert result.families["grams"].accuracy == accuracy
        assert result.families["grams"].n == 6
