"""What `avocado watermark suspect` may ask besides the tiny world: the prompts of a file
(`--prompts-file`, any source format, a `messages` or `prompt` column or `--prompt-column`) or
of a recipe (`--recipe`: its data sources, both splits, and its tiny-world families); bad input
is a clear usage error."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avocado_llm.cli import main
from avocado_llm.config import load_recipe
from avocado_llm.data.sources import DataError
from avocado_llm.protect.suspect import file_source, recipe_prompts, source_prompts

CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}],
    [{"role": "user", "content": "Plural of mouse?"}],
]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_jsonl_of_chats_is_asked_as_chats(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "chats.jsonl", [{"messages": m, "x": 1} for m in CHATS])
    assert source_prompts([file_source(path)]) == CHATS


def test_a_prompt_column_becomes_a_user_turn_and_duplicates_go(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Two plus two?"},
        {"prompt": "Opposite of hot?"},
        {"prompt": "Two plus two?"},
    ]
    path = jsonl(tmp_path / "p.jsonl", rows)
    assert source_prompts([file_source(path)]) == [
        [{"role": "user", "content": "Two plus two?"}],
        [{"role": "user", "content": "Opposite of hot?"}],
    ]


def test_any_column_of_a_csv_or_parquet_file(tmp_path: Path) -> None:
    csv = tmp_path / "q.csv"
    csv.write_text("id,question\n1,How many legs has a spider?\n2,What is 7 times 8?\n")
    assert [m[-1]["content"] for m in source_prompts([file_source(csv, "question")])] == [
        "How many legs has a spider?",
        "What is 7 times 8?",
    ]
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"chat": [CHATS[1]], "n": [1]}), parquet)
    assert source_prompts([file_source(parquet, "chat")]) == [CHATS[1]]


def test_a_file_without_the_column_names_the_columns_it_has(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "odd.jsonl", [{"question": "Why?", "answer": "Because."}])
    with pytest.raises(DataError, match=r"it has question, answer.*--prompt-column"):
        file_source(path)
    with pytest.raises(DataError, match="'query' column"):
        file_source(path, "query")
    with pytest.raises(DataError, match="no such file"):
        file_source(tmp_path / "missing.jsonl")


def test_a_recipe_gives_its_sources_both_splits_and_its_families(tmp_path: Path) -> None:
    rows = [{"q": f"What is the colour of thing number {i}?", "a": "red"} for i in range(40)]
    jsonl(tmp_path / "own.jsonl", rows)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        textwrap.dedent(
            """\
            name: mine
            world:
              families: [arithmetic]
            data:
              sources:
                - name: own
                  path: own.jsonl
                  prompt: q
                  reference: a
                  verifier: short
                  heldout_fraction: 0.5
            teachers:
              - name: qwen-tiny
                zoo: true
            """
        )
    )
    recipe = load_recipe(recipe_file)
    prompts = recipe_prompts(recipe, 5)
    asked = [m[-1]["content"] for m in prompts]
    assert sorted(asked[:40]) == sorted(r["q"] for r in rows)  # held-out and training alike
    assert len(prompts) == 45  # and 5 sums of the tiny world
    assert len(recipe_prompts(recipe, 0)) == 40


def test_the_command_refuses_bad_prompt_options(
    zoo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", "s")
    base = ["watermark", "suspect", "--url", "http://127.0.0.1:9/v1", "--account", "1"]
    base += ["--model-dir", str(zoo_dir / "qwen-tiny")]
    assert main([*base, "--prompt-column", "q"]) == 2
    assert "--prompt-column needs --prompts-file" in capsys.readouterr().err
    odd = jsonl(tmp_path / "odd.jsonl", [{"question": "Why?"}])
    assert main([*base, "--prompts-file", str(odd)]) == 2
    assert "needs a `messages` (chat) or `prompt` (text) column" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteachers: []\nharvest: {samples_per_prompt: 0}\n")
    assert main([*base, "--recipe", str(bad)]) == 2
    assert "samples_per_prompt" in capsys.readouterr().err
