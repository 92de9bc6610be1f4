"""The recipe's schema holds task-family names as data; the world refuses unknown ones where
they are used: ``avocado recipe check``, ``avocado run`` (before the zoo build), the harvest and
the evaluation — each with the closest known family, before any work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from avocado_llm.cli import main
from avocado_llm.config import RecipeError, load_recipe
from avocado_llm.evaluate import EvalError, ModelSource, evaluate_model
from avocado_llm.harvest import HarvestError, harvest
from avocado_llm.world.checks import check_families, family_problems

RECIPE = """\
name: typo
world:
  families: [arithmetc, counting]
  unverified: [fcts]
teachers:
  - {name: qwen-tiny, zoo: true}
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "typo.yaml"
    path.write_text(RECIPE)
    return path


def test_the_schema_loads_names_and_the_world_refuses_unknown_ones(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)  # the config alone does not know the tiny world
    problems = {p.path: p for p in family_problems(recipe)}
    assert set(problems) == {"world.families[0]", "world.unverified[0]"}
    assert "unknown task family 'arithmetc'" in problems["world.families[0]"].message
    assert problems["world.families[0]"].fix == "did you mean 'arithmetic'?"
    assert problems["world.unverified[0]"].fix == "did you mean 'facts'?"
    with pytest.raises(RecipeError, match="2 problems"):
        check_families(recipe)


def test_recipe_check_reports_an_unknown_family(
    recipe_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recipe", "check", str(recipe_file)]) == 1
    err = capsys.readouterr().err
    assert "world.families[0]: unknown task family 'arithmetc'" in err
    assert "did you mean 'arithmetic'?" in err


def test_run_refuses_an_unknown_family_before_the_zoo(
    recipe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(recipe_file), "--set", f"output_dir={tmp_path / 'runs'}"]) == 1
    assert "unknown task family 'arithmetc'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_harvest_and_evaluation_refuse_an_unknown_family(
    recipe_file: Path, tmp_path: Path, zoo_dir: Path
) -> None:
    recipe = load_recipe(recipe_file)
    with pytest.raises(HarvestError, match="unknown task family 'arithmetc'"):
        asyncio.run(harvest(recipe, out_dir=tmp_path / "harvest", teachers=[]))
    assert not (tmp_path / "harvest").exists()
    source = ModelSource(path=zoo_dir / "qwen-tiny")
    with pytest.raises(EvalError, match="unknown task family 'arithmetc'"):
        evaluate_model(recipe, source, role="teacher", out=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_a_recipe_of_data_sources_only_is_checked_and_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``data.sources`` are read by ``avocado data check`` and by every stage (harvest, fusion,
    training, evaluation): ``recipe check`` passes a recipe of sources only, and so does the
    stages' check (tests/harvest/test_harvest_sources.py runs one end to end)."""
    (tmp_path / "own.jsonl").write_text('{"question": "What is 2 plus 2?"}\n')
    path = tmp_path / "own.yaml"
    path.write_text(
        "name: own\nworld:\n  families: []\ndata:\n  sources:\n"
        "    - {name: own, path: own.jsonl, prompt: question}\n"
        "teachers:\n  - {name: qwen-tiny, zoo: true}\n"
    )
    assert main(["recipe", "check", str(path)]) == 0
    assert "data sources own" in capsys.readouterr().out
    check_families(load_recipe(path))
