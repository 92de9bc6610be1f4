"""``avocado harvest``: --limit covers every family, --set overrides, --status reports, and
mistakes end with exit code 1 and a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from avocado_llm import cli
from avocado_llm.config import load_recipe
from avocado_llm.harvest import harvest_prompts, read_records


def test_limit_takes_the_first_prompts_of_every_family(write_recipe) -> None:
    recipe = load_recipe(write_recipe(families=("arithmetic", "reverse", "counting")))
    prompts = harvest_prompts(recipe, limit=5)
    families = [p.family for p in prompts]
    assert families == ["arithmetic", "reverse", "counting", "arithmetic", "reverse"]
    everything = harvest_prompts(recipe)
    assert len(everything) == 12 and everything[:5] == prompts


def test_harvest_then_status(write_recipe, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(teachers=("qwen-tiny",), families=("arithmetic", "reverse", "counting"))
    args = ["harvest", str(path), "--limit", "3", "--set", "harvest.top_logprobs=2"]
    assert cli.main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "qwen-tiny" in printed and "harvest-test" in printed

    out = load_recipe(path).run_dir / "harvest"
    records = read_records(out)
    assert sorted(records["family"].to_pylist()) == ["arithmetic", "counting", "reverse"]
    assert all(len(top) == 2 for row in records["top_ids"].to_pylist() for top in row)

    assert cli.main(["harvest", str(path), "--status"]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if "qwen-tiny" in line)
    cells = [cell.strip() for cell in line.strip("│ ").split("│")]
    tokens = sum(records["completion_tokens"].to_pylist())
    assert cells[:5] == ["qwen-tiny", "3", "3", "0", str(tokens)]
    assert cells[5].startswith(("stop", "length"))


def test_status_without_a_harvest(write_recipe, tmp_path: Path, capsys) -> None:
    args = ["harvest", str(write_recipe()), "--status", "--out", str(tmp_path / "none")]
    assert cli.main(args) == 1
    assert "no harvest in" in capsys.readouterr().err


def test_a_bad_recipe_is_reported(write_recipe, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["harvest", str(write_recipe()), "--set", "harvest.batch_size=0"]) == 1
    assert "batch_size" in capsys.readouterr().err


def test_a_bad_limit_is_reported(write_recipe, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["harvest", str(write_recipe()), "--limit", "0"]) == 1
    assert "limit must be at least 1, got 0" in capsys.readouterr().err
