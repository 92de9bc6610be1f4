"""``fusion.use_reference``: with ``verify``, a graded prompt that no teacher answered right
teaches its reference answer (cross-entropy only: no teacher weights)."""

from __future__ import annotations

from pathlib import Path

from avocado_llm.fusion import fuse
from avocado_llm.fusion.store import read_fused, write_fused


def _table(records):
    r = records()
    r.add("qwen-tiny", "s1", "The answer is 12.", family="sums", gold="12")
    r.add("gemma-tiny", "s1", "The answer is 13.", family="sums", gold="12")
    r.add("qwen-tiny", "s2", "The answer is 7.", family="sums", gold="8")  # nobody is right
    r.add("gemma-tiny", "s2", "The answer is 9.", family="sums", gold="8")
    r.add("qwen-tiny", "o1", "Blue.", family="open", gold="Red.")  # no verifier: never read
    r.add("gemma-tiny", "o1", "Blue.", family="open", gold="Red.")
    return r.table()


SOURCES = {"sums": "number", "open": "none"}


def test_a_prompt_no_teacher_got_right_teaches_its_reference(records) -> None:
    examples, report = fuse(
        _table(records), "verify", unverified=[], sources=SOURCES, use_reference=True
    )
    by_prompt = {ex.prompt_id: ex for ex in examples}
    assert by_prompt["s1"].target == "The answer is 12."
    assert by_prompt["s1"].strategy == "verify"
    assert (by_prompt["s2"].target, by_prompt["s2"].strategy) == ("8", "reference")
    assert by_prompt["s2"].weights == {} and by_prompt["s2"].record_keys == {}
    assert by_prompt["o1"].target == "Blue."  # label-free: the reference stays unread
    assert report.families["sums"].references == 1
    assert report.families["sums"].kept == 2
    assert report.families["open"].references == 0


def test_without_it_such_a_prompt_teaches_nothing(records) -> None:
    examples, report = fuse(_table(records), "verify", unverified=[], sources=SOURCES)
    assert "s2" not in {ex.prompt_id for ex in examples}
    assert report.families["sums"].references == 0


def test_other_strategies_ignore_it(records) -> None:
    examples, _ = fuse(_table(records), "vote", unverified=[], sources=SOURCES, use_reference=True)
    assert all(ex.strategy == "vote" for ex in examples)


def test_reference_examples_survive_the_fused_file(records, tmp_path: Path) -> None:
    examples, report = fuse(
        _table(records), "verify", unverified=[], sources=SOURCES, use_reference=True
    )
    path = write_fused(tmp_path, "verify", examples, report, {"k": 1})
    back = {ex.prompt_id: ex for ex in read_fused(path)}
    assert back["s2"].target == "8" and back["s2"].weights == {}
    assert back["s2"].strategy == "reference"
