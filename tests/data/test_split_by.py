"""``split_by``: a column that groups rows (one question asked in several chats, one document),
so that every row of a group falls on the same side of the split."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from test_sources import rows, source, write_jsonl

from avocado_llm.config import SourceConfig
from avocado_llm.data.prompts import check_sources
from avocado_llm.data.sources import DataError


def _grouped(tmp_path: Path, groups: int = 60, per_group: int = 4) -> Path:
    items = [
        {"question": f"Variant {k} of question {g}: what is item {g}?", "answer": f"a{g}",
         "group": f"Q{g}"}
        for g in range(groups) for k in range(per_group)
    ]  # fmt: skip
    return write_jsonl(tmp_path / "grouped.jsonl", items)


def _sides(cfg: SourceConfig) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = defaultdict(set)
    for row in rows(cfg):
        group = row.messages[-1]["content"].split("question ")[1].split(":")[0]
        sides[group].add(row.split)
    return sides


def test_rows_of_a_group_share_a_side(tmp_path: Path) -> None:
    path = _grouped(tmp_path)
    grouped = _sides(source(path, reference="answer", split_by="group", heldout_fraction=0.3))
    alone = _sides(source(path, reference="answer", heldout_fraction=0.3))

    assert all(len(sides) == 1 for sides in grouped.values())
    held = sum(1 for sides in grouped.values() if sides == {"heldout"})
    assert 5 <= held <= 35  # a share of the 60 groups, not all or none
    # Without it, the same rows split prompt by prompt: many groups straddle both sides.
    assert sum(1 for sides in alone.values() if len(sides) == 2) >= 20


def test_the_split_by_group_is_stable_and_normalized(tmp_path: Path) -> None:
    """Case and spacing of the group value do not matter; row order does not either."""
    items = [
        {"question": f"Q{i}", "group": "Thread  A" if i % 2 else "thread a"} for i in range(40)
    ]
    path = write_jsonl(tmp_path / "a.jsonl", items)
    reverse = write_jsonl(tmp_path / "b.jsonl", items[::-1])
    cfg = source(path, split_by="group", heldout_fraction=0.5)
    splits = {r.messages[-1]["content"]: r.split for r in rows(cfg)}
    again = {
        r.messages[-1]["content"]: r.split
        for r in rows(source(reverse, split_by="group", heldout_fraction=0.5))
    }
    assert len(set(splits.values())) == 1
    assert splits == again


def test_a_missing_split_by_column_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = _grouped(tmp_path)
    with pytest.raises(DataError) as error:
        rows(source(path, split_by="grup"))
    message = str(error.value)
    assert "'grup'" in message and "group" in message


def test_an_empty_split_by_value_is_a_bad_row(tmp_path: Path) -> None:
    items = [{"question": "first", "group": "g1"}, {"question": "second", "group": "  "},
             {"question": "third", "group": None}]  # fmt: skip
    path = write_jsonl(tmp_path / "e.jsonl", items)
    with pytest.raises(DataError, match=r"2 bad rows \(2 empty split_by\)"):
        rows(source(path, split_by="group"))
    report = check_sources([source(path, split_by="group", on_error="skip")])["s"]
    assert (report.train + report.heldout, report.skipped) == (1, 2)
    assert report.reasons == {"empty split_by": 2}


def test_the_example_support_chats_split_by_question_lose_fewer_to_contamination() -> None:
    """The shipped support source asks each question in up to three chats: split by question,
    far fewer training chats ask a held-out question with its answer."""
    path = Path(__file__).parents[2] / "examples" / "data" / "support_chats.jsonl"
    base = {"messages": "messages", "reference": "answer", "id": "ticket", "name": "support"}
    by_prompt = check_sources([source(path, **base)])["support"]
    by_question = check_sources([source(path, split_by="question", **base)])["support"]
    assert by_question.contaminated < by_prompt.contaminated / 3
    assert by_question.train > 1.5 * by_prompt.train
