"""Fusion over prompt sources (``data.sources``): ``verify`` uses a source's own verifier
against its reference, fuses a source without one label-free (its reference never read), and
reports per source name; ``vote`` works on sources as on any family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import Recipe, load_recipe
from avocado_llm.data.verifiers import VERSIONS
from avocado_llm.fusion import fuse, fusion_fingerprint


def _table(records):
    r = records()
    # "sums": a number verifier; the lone right answer beats two agreeing wrong ones.
    r.add("qwen-tiny", "s1", "The answer is 12.", family="sums", gold="12")
    r.add("gemma-tiny", "s1", "The answer is 13.", family="sums", gold="12")
    r.add("gpt-oss-tiny", "s1", "The answer is 13.", family="sums", gold="12")
    # "open": no verifier; a reference that is there (a chat's last turn) must not be read.
    r.add("qwen-tiny", "o1", "Blue.", family="open", gold="Red.")
    r.add("gemma-tiny", "o1", "Blue.", family="open", gold="Red.")
    r.add("gpt-oss-tiny", "o1", "Red.", family="open", gold="Red.")
    return r.table()


def test_verify_uses_each_sources_verifier_and_votes_without_one(records) -> None:
    sources = {"sums": "number", "open": "none"}
    examples, report = fuse(_table(records), "verify", unverified=[], sources=sources)
    by_family = {ex.family: ex for ex in examples}
    assert by_family["sums"].target == "The answer is 12."
    assert by_family["sums"].strategy == "verify"
    assert by_family["open"].target == "Blue."  # the majority, not the reference
    assert by_family["open"].strategy == "vote"
    assert set(report.families) == {"sums", "open"}
    assert report.families["sums"].reliability["qwen-tiny"] == 1.0
    assert report.families["sums"].target_accuracy == 1.0
    assert report.families["open"].target_accuracy is None


def test_a_family_that_is_no_source_and_no_world_family_is_fused_label_free(records) -> None:
    """Records of a source the recipe no longer names: their gold is not read either."""
    examples, _ = fuse(_table(records), "verify", unverified=[], sources={"sums": "number"})
    assert {ex.family: ex.target for ex in examples}["open"] == "Blue."


def test_vote_on_sources(records) -> None:
    sources = {"sums": "number", "open": "none"}
    examples, report = fuse(_table(records), "vote", unverified=[], sources=sources)
    assert {ex.family: ex.target for ex in examples} == {
        "sums": "The answer is 13.",
        "open": "Blue.",
    }
    assert set(report.families) == {"sums", "open"}


def test_verify_gives_the_source_verifier_the_prompts_question(records) -> None:
    """A teacher that restates the question ("There are 7000 grams in 7 kilograms.") is right
    only when the verifier reads the question: fusion gives it the prompt's last user message,
    in the choice, the reliabilities and the report's target accuracy."""
    r = records()
    r.add("qwen-tiny", "g1", "There are 7000 grams in 7 kilograms.", family="grams", gold="7000")
    r.add("gemma-tiny", "g1", "There are 7 grams in 7 kilograms.", family="grams", gold="7000")
    r.add("gpt-oss-tiny", "g1", "There are 7 grams in 7 kilograms.", family="grams", gold="7000")
    r.add("qwen-tiny", "c1", "Paris is the capital of France.", family="capitals", gold="Paris")
    r.add("gemma-tiny", "c1", "Lyon is the capital of France.", family="capitals", gold="Paris")
    r.add("gpt-oss-tiny", "c1", "Lyon is the capital of France.", family="capitals", gold="Paris")
    questions = {"g1": "How many grams are in 7 kilograms?",
                 "c1": "What is the capital of France? Answer with the name only."}  # fmt: skip
    for row in r.rows:
        row["messages"] = [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": questions[row["prompt_id"]]}]  # fmt: skip
    sources = {"grams": "number", "capitals": "short"}
    examples, report = fuse(r.table(), "verify", unverified=[], sources=sources)
    by_family = {ex.family: ex for ex in examples}
    assert by_family["grams"].target == "There are 7000 grams in 7 kilograms."
    assert by_family["capitals"].target == "Paris is the capital of France."
    assert {ex.strategy for ex in examples} == {"verify"}
    for family in sources:
        assert report.families[family].reliability == {
            "gemma-tiny": 0.0, "gpt-oss-tiny": 0.0, "qwen-tiny": 1.0
        }  # fmt: skip
        assert report.families[family].target_accuracy == 1.0


def _recipe(tmp_path: Path, zoo_dir: Path, specs: list[str]) -> Recipe:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "How many?", "answer": "7"}) + "\n", "utf-8")
    sources = [{"name": f"s{i}", "path": str(rows), "prompt": "question", "reference": "answer",
                "verifier": spec} for i, spec in enumerate(specs)]  # fmt: skip
    data = {
        "name": "fingerprints",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": [] if specs else ["arithmetic"], "zoo_dir": str(zoo_dir)},
        "teachers": [{"name": "qwen-tiny", "zoo": True}],
    } | ({"data": {"sources": sources}} if specs else {})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_recipe(path)


@pytest.mark.parametrize(
    ("specs", "versions"),
    [
        ([], None),  # the tiny world alone: its fingerprint keeps its keys
        (["exact", "none"], None),  # no verifier that changed: fused files still match
        (["number", "exact"], {"number": VERSIONS["number"]}),
        (["short", "number"], {"number": VERSIONS["number"], "short": VERSIONS["short"]}),
    ],
)
def test_the_fusion_fingerprint_names_the_versions_of_the_verifiers_that_changed(
    records, tmp_path: Path, zoo_dir: Path, specs: list[str], versions: dict | None
) -> None:
    """A file fused with the verifiers that read no question (version 1) is fused again."""
    table = records().add("qwen-tiny", "p1", "7").table()
    fingerprint = fusion_fingerprint(_recipe(tmp_path, zoo_dir, specs), "verify", table)
    assert fingerprint.get("verifiers") == versions
    assert ("data.sources verifiers" in fingerprint) == bool(specs)
