"""Fused examples on disk, and the recipe fields fusion reads."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from avocado_llm.cli import main
from avocado_llm.config import RecipeError, load_recipe
from avocado_llm.fusion import FusionError, fuse, read_fused, read_report, write_fused
from avocado_llm.world.checks import family_problems


def test_write_then_read_gives_back_the_examples_and_report(records, tmp_path: Path) -> None:
    r = records()
    r.add("qwen", "p1", "The answer is 5.", gold="5").add("gemma", "p1", "5", gold="5")
    r.add("qwen", "p2", "The answer is 3.", gold="3").add("gemma", "p2", "3", gold="3")
    examples, report = fuse(r.table(), "single:qwen", unverified=set())

    path = write_fused(tmp_path / "fusion", "single:qwen", examples, report)
    assert path == tmp_path / "fusion" / "single-qwen.parquet"
    assert read_fused(path) == examples
    assert read_report(path) == report
    saved = json.loads(path.with_suffix(".report.json").read_text())
    assert saved["wins"] == {"gemma": 0, "qwen": 2}
    assert "target_accuracy" not in saved["families"]["arithmetic"]  # only under diagnostics
    assert saved["diagnostics"]["target_accuracy"] == {"arithmetic": 1.0}
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file

    # Rewriting replaces the file whole.
    write_fused(tmp_path / "fusion", "single:qwen", examples[:1], report)
    assert read_fused(path) == examples[:1]
    with pytest.raises(FusionError, match="avocado fuse"):
        read_fused(tmp_path / "nothing.parquet")


def write_recipe(tmp_path: Path, world: str = "", fusion: str = "") -> Path:
    text = f"""\
    name: fused
    world:
      families: [arithmetic, units]
    {textwrap.indent(textwrap.dedent(world), "  ")}
    teachers:
      - name: qwen
        zoo: true
    fusion:
      strategy: vote
    {textwrap.indent(textwrap.dedent(fusion), "  ")}
    """
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_recipe_unverified_defaults_and_checks(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    assert recipe.world.unverified == ["facts", "units"]
    assert recipe.fusion.min_weight == 0.0

    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, world="unverified: [unit]", fusion="min_weight: 2"))
    problems = {p.path: p for p in caught.value.problems}
    assert "fusion.min_weight" in problems
    # family names are the world's to check, where they are used (world/checks.py, #20)
    typo = load_recipe(write_recipe(tmp_path, world="unverified: [unit]"))
    problems = {p.path: p for p in family_problems(typo)}
    assert "did you mean 'units'" in problems["world.unverified[0]"].fix


def test_fuse_command_says_what_to_do_without_a_harvest(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    assert main(["fuse", str(recipe), "--harvest", str(tmp_path / "none")]) == 1
    assert "run `avocado harvest" in capsys.readouterr().err
