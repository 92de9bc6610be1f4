"""Prompt sources (issue #21): every format, columns, splits, dedup, decontamination, bad input,
and ``avocado data check --json`` through a real subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avocado_llm.config import SourceConfig
from avocado_llm.data.prompts import (
    PromptRow,
    check_sources,
    heldout_index,
    iter_prompts,
    normalize,
    prompt_rows,
)
from avocado_llm.data.sources import DataError, source_digest

CHATS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}], "answer": str(2 * i)}
    for i in range(40)
]


def source(path: Path, **fields: Any) -> SourceConfig:
    fields.setdefault("name", "s")
    if "messages" not in fields:
        fields.setdefault("prompt", "question")
    return SourceConfig(path=path, **fields)


def rows(cfg: SourceConfig, split: str | None = None) -> list[PromptRow]:
    index = heldout_index([cfg])
    splits = [split] if split else ["train", "heldout"]
    return [r for s in splits for r in prompt_rows(cfg, s, index)]  # type: ignore[arg-type]


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def write_table(path: Path, items: list[dict[str, Any]]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(items[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(items)
    return path


QUESTIONS = [{"question": f"Name a colour number {i}", "answer": f"c{i}"} for i in range(30)]


def write_datasets_dir(path: Path, items: list[dict[str, Any]]) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(items).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet", "datasets"])
def test_every_format_gives_the_same_prompts(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, QUESTIONS)
    elif suffix == ".json":
        path.write_text(json.dumps(QUESTIONS, indent=1), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        write_table(path, QUESTIONS)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(QUESTIONS), path, row_group_size=7)
    else:
        write_datasets_dir(path, QUESTIONS)

    got = rows(source(path, reference="answer", heldout_fraction=0.3))

    assert sorted((r.messages[-1]["content"], r.reference) for r in got) == sorted(
        (q["question"], q["answer"]) for q in QUESTIONS
    )
    assert {r.split for r in got} == {"train", "heldout"}
    assert all(r.source == "s" and len(r.id) == 32 for r in got)


def test_a_datasets_dict_directory_reads_every_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    half = len(QUESTIONS) // 2
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(QUESTIONS[:half]),
        "test": datasets.Dataset.from_list(QUESTIONS[half:]),
    })  # fmt: skip
    dd.save_to_disk(str(tmp_path / "dd"))

    assert len(rows(source(tmp_path / "dd"))) == len(QUESTIONS)


def test_chats_keep_earlier_turns_and_a_trailing_answer_becomes_the_reference(
    tmp_path: Path,
) -> None:
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": chat}])

    (row,) = rows(source(path, messages="messages", heldout_fraction=0.0))

    assert row.messages == chat[:-1]
    assert row.reference == "4"
    # a reference column wins over the trailing turn
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": chat, "gold": "four"}])
    (row,) = rows(source(path, messages="messages", reference="gold", heldout_fraction=0.0))
    assert row.reference == "four" and row.messages == chat[:-1]


def test_chats_as_json_text_in_a_csv_column(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "Tell me a joke"}]
    path = write_table(tmp_path / "c.csv", [{"conv": json.dumps(chat)}])

    (row,) = rows(source(path, messages="conv"))

    assert row.messages == chat and row.reference is None


def test_system_is_a_column_when_the_source_has_it_else_a_literal(tmp_path: Path) -> None:
    items = [{"question": "a?", "sys": "Be kind."}, {"question": "b?", "sys": None}]
    path = write_jsonl(tmp_path / "s.jsonl", items)

    by_column = {r.messages[-1]["content"]: r.messages for r in rows(source(path, system="sys"))}
    literal = rows(source(path, system="Answer in French."))

    assert by_column["a?"][0] == {"role": "system", "content": "Be kind."}
    assert by_column["b?"] == [{"role": "user", "content": "b?"}]
    assert all(r.messages[0] == {"role": "system", "content": "Answer in French."} for r in literal)
    # the system prompt is part of the prompt: same question, other system → another id
    assert {r.id for r in literal}.isdisjoint({r.id for r in rows(source(path, system="sys"))})


def test_splits_are_stable_disjoint_and_independent_of_row_order(tmp_path: Path) -> None:
    items = [{"question": f"Question number {i}?"} for i in range(400)]
    forward = write_jsonl(tmp_path / "f.jsonl", items)
    backward = write_jsonl(tmp_path / "b.jsonl", items[::-1])

    first = {r.id: r.split for r in rows(source(forward))}
    again = {r.id: r.split for r in rows(source(forward))}
    reversed_ = {r.id: r.split for r in rows(source(backward))}
    train = {r.id for r in rows(source(forward), "train")}
    heldout = {r.id for r in rows(source(forward), "heldout")}

    assert first == again == reversed_
    assert train.isdisjoint(heldout) and len(train) + len(heldout) == 400
    assert 40 <= len(heldout) <= 120  # about 0.2 of 400


def test_duplicates_are_dropped_by_normalized_exact_match(tmp_path: Path) -> None:
    items = [
        {"question": "What is the capital of France?"},
        {"question": "what  is the CAPITAL of france?"},
        {"question": "What is the capital of Spain?"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", items)

    (report,) = check_sources([source(path)]).values()

    assert (report.rows, report.duplicates, report.train + report.heldout) == (3, 1, 2)
    assert normalize("  A\u00a0b\tC ") == "a b c"


BAD_JSONL = (
    b'{"question": "fine"}\n'
    b"{not json\n"
    b'{"question": "caf\xe9"}\n'  # latin-1, not UTF-8
    b'{"question": "   "}\n'
    b'{"quest": "typo"}\n'
    b"[1, 2]\n"
    b'{"question": "' + b"x" * 100 + b'"}\n'
)


def test_bad_rows_are_named_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(BAD_JSONL)

    (report,) = check_sources([source(path, on_error="skip", max_prompt_tokens=10)]).values()

    assert (report.rows, report.skipped, report.train + report.heldout) == (7, 6, 1)
    errors = "\n".join(report.errors)
    assert "bad.jsonl line 2: malformed JSON" in errors
    assert "bad.jsonl line 3: non-UTF-8 bytes" in errors
    assert "bad.jsonl line 4: empty prompt" in errors
    assert (
        "bad.jsonl line 5: no column 'question' (columns there: quest); did you mean 'quest'?"
        in errors
    )
    assert "bad.jsonl line 6: expected a JSON object, got list" in errors
    assert "bad.jsonl line 7: prompt too long: 100 characters" in errors


def test_on_error_fail_lists_the_first_ten_and_the_count(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"question": "ok"}\n' + b"{oops\n" * 25)

    with pytest.raises(DataError) as caught:
        check_sources([source(path)])

    message = str(caught.value)
    assert "25 bad rows (25 malformed JSON)" in message
    assert "broken.jsonl line 2: malformed JSON" in message
    assert "broken.jsonl line 11:" in message and "broken.jsonl line 12:" not in message
    assert "… and 15 more" in message and "on_error: skip" in message


def test_a_missing_column_names_the_columns_and_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"questions": "a", "answer": "b"}]), path)

    with pytest.raises(DataError) as caught:
        check_sources([source(path, on_error="skip")])

    assert str(caught.value) == (
        f"{path}: no column 'question' (columns there: questions, answer); "
        "did you mean 'questions'?"
    )


def test_non_utf8_bytes_in_a_csv_row_refuse_that_row_only(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"question\nfine\nna\xefve\nalso fine\n")

    (report,) = check_sources([source(path, on_error="skip")]).values()

    assert (report.rows, report.skipped) == (3, 1)
    assert report.errors == ["t.csv line 3: non-UTF-8 bytes in 'question'"]


def test_duplicate_ids_are_bad_rows(tmp_path: Path) -> None:
    items = [
        {"id": "a", "question": "x?"},
        {"id": "b", "question": "y?"},
        {"id": "a", "question": "z?"},
    ]
    path = write_jsonl(tmp_path / "i.jsonl", items)

    (report,) = check_sources([source(path, id="id", on_error="skip")]).values()
    assert report.errors == ["i.jsonl line 3: duplicate id 'a' in column 'id'"]
    with pytest.raises(DataError, match="1 bad rows \\(1 duplicate id\\)"):
        check_sources([source(path, id="id")])


def test_bad_chats_are_explained(tmp_path: Path) -> None:
    items = [
        {"m": [{"role": "user", "content": "ok"}]},
        {"m": [{"role": "robot", "content": "x"}]},
        {"m": [{"role": "assistant", "content": "only an answer"}]},
        {"m": "not a chat"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", items)

    (report,) = check_sources([source(path, messages="m", on_error="skip")]).values()

    assert report.skipped == 3
    assert "c.jsonl line 2: m[0] has role 'robot'" in report.errors[0]
    assert report.errors[1] == "c.jsonl line 3: empty prompt (no user turn with text)"
    assert "c.jsonl line 4: 'm' is not a JSON chat" in report.errors[2]


def test_limit_takes_the_first_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", QUESTIONS)

    (report,) = check_sources([source(path, limit=5)]).values()

    assert report.rows == 5 and report.train + report.heldout == 5


def test_source_digest_changes_with_the_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", QUESTIONS)
    before = source_digest(path)
    write_jsonl(path, QUESTIONS[:-1])

    assert before.startswith("sha256:") and source_digest(path) != before
    directory = write_datasets_dir(tmp_path / "ds", QUESTIONS)
    assert source_digest(directory) == source_digest(directory)


RECIPE = """\
name: own
teachers: [{name: q, zoo: true}]
world: {families: []}
data:
  sources:
    - {name: chats, path: chats.jsonl, messages: messages, reference: answer, verifier: number}
    - {name: tickets, path: tickets.csv, prompt: question, on_error: skip}
"""


def avocado(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "avocado_llm.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_data_check_json_through_the_command(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "chats.jsonl", [*CHATS, CHATS[0]])
    (tmp_path / "tickets.csv").write_text('question\nMy order is late\n\nWhere is it?\n""\n')
    (tmp_path / "recipe.yaml").write_text(RECIPE)

    done = avocado("data", "check", "recipe.yaml", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert list(out) == ["sources"] and list(out["sources"]) == ["chats", "tickets"]
    chats, tickets = out["sources"]["chats"], out["sources"]["tickets"]
    assert list(chats) == [
        "rows",
        "train",
        "heldout",
        "duplicates",
        "contaminated",
        "skipped",
        "errors",
    ]
    assert (chats["rows"], chats["duplicates"], chats["train"] + chats["heldout"]) == (41, 1, 40)
    assert 0 < chats["heldout"] < 40
    assert (tickets["rows"], tickets["skipped"]) == (3, 1)
    assert tickets["errors"] == ["tickets.csv line 5: empty prompt"]

    text = avocado("data", "check", "recipe.yaml", cwd=tmp_path)
    assert text.returncode == 0 and "tickets: 3 rows read" in text.stdout
    assert "skipped 1: empty prompt" in text.stdout


def test_data_check_fails_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "chats.jsonl").write_text('{"messages": []}\n{"messages": \n')
    (tmp_path / "tickets.csv").write_text("question\nhello\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE)

    done = avocado("data", "check", "recipe.yaml", "--json", cwd=tmp_path)

    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: source 'chats'")
    assert "chats.jsonl line 2: malformed JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_unusable_sources_raise_a_clear_data_error(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"question": "a"}, {"question": "b"')
    (tmp_path / "plain").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "state.json").write_text("{")
    expected = {
        "a.json": "a.json element 2: malformed JSON",
        "plain": "not a directory saved by datasets",
        "damaged": "a damaged datasets directory",
    }
    for name, message in expected.items():
        with pytest.raises(DataError, match=message):
            check_sources([source(tmp_path / name, on_error="skip")])


def test_non_utf8_bytes_in_a_binary_parquet_column(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"question": pa.array([b"ok", b"caf\xe9"], pa.binary())}), path)

    (report,) = check_sources([source(path, on_error="skip")]).values()

    assert report.errors == ["b.parquet row 2: non-UTF-8 bytes in 'question'"]


def test_iter_prompts_gives_every_source_split_by_split(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", QUESTIONS)
    b = write_table(tmp_path / "b.csv", [{"question": "What now?"}, {"question": "x,y"}])
    sources = [source(a, name="a"), source(b, name="b", heldout_fraction=0.0)]

    train = list(iter_prompts(sources, "train"))
    heldout = list(iter_prompts(sources, "heldout"))

    assert len(train) + len(heldout) == len(QUESTIONS) + 2
    assert {r.source for r in train} == {"a", "b"} and {r.source for r in heldout} == {"a"}
    assert {r.id for r in train}.isdisjoint({r.id for r in heldout})


def test_a_csv_row_with_the_wrong_number_of_fields_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("question,answer\nok,1\ntoo,many,fields\n")

    (report,) = check_sources([source(path, on_error="skip")]).values()

    assert report.reasons == {"wrong number of fields": 1}
    assert report.errors == ["w.csv line 3: 3 fields where the header has 2"]


def test_a_byte_order_mark_in_jsonl_is_not_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "first"}\n{"question": "second"}\n')

    (report,) = check_sources([source(path)]).values()

    assert (report.rows, report.skipped) == (2, 0)


def test_a_damaged_parquet_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(1000)]}), path)
    data = bytearray(path.read_bytes())
    data[8:400] = b"\xff" * 392  # the first column chunk's pages
    path.write_bytes(bytes(data))

    with pytest.raises(DataError, match=r"d\.parquet"):
        check_sources([source(path)])


def test_a_chats_own_system_turn_wins_over_the_sources_system(tmp_path: Path) -> None:
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    path = write_jsonl(tmp_path / "o.jsonl", [{"m": own}, {"m": own[1:]}])

    got = rows(source(path, messages="m", system="Default.", heldout_fraction=0.0))

    assert sorted(r.messages[0]["content"] for r in got) == ["Default.", "Mine."]
    assert all(len(r.messages) == 2 for r in got)


def test_a_list_reference_is_joined_as_a_sequence_verifier_reads_it(tmp_path: Path) -> None:
    """A Parquet column holding a list answer (a `sequence` reference) becomes "3, 1, 2", what
    the `sequence` verifier compares; a list of objects is still a bad row."""
    items = [{"question": f"Sort {i} 3 1", "answer": [1, 3, i]} for i in range(20)]
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.Table.from_pylist(items), path)
    got = {r.messages[-1]["content"]: r.reference for r in rows(source(path, reference="answer"))}
    assert got["Sort 7 3 1"] == "1, 3, 7" and len(got) == 20
    odd = [{"question": "Sort 3 1", "answer": [{"x": 1}]}]
    path = tmp_path / "odd.jsonl"
    write_jsonl(path, odd)
    with pytest.raises(DataError, match="not text"):
        rows(source(path, reference="answer"))
