"""Every shipped recipe loads and validates; nothing here touches the network or a model."""

from pathlib import Path

import pytest

from avocado_llm.config import Recipe, load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_there_are_recipes() -> None:
    names = {path.name for path in RECIPES}
    assert {"tiny.yaml", "real-teachers.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_loads_without_problems(path: Path) -> None:
    recipe = load_recipe(path)  # raises RecipeError listing every problem
    assert isinstance(recipe, Recipe)
    assert recipe.teachers
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Run:"), "a recipe's first line says how to run it"


def test_real_teachers_are_three_vllm_servers() -> None:
    recipe = load_recipe(RECIPES_DIR / "real-teachers.yaml")
    teachers = {t.name: t for t in recipe.teachers}
    assert len(teachers) == 3
    for teacher in teachers.values():
        assert teacher.kind == "local" and teacher.engine == "vllm"  # Avocado starts them
        assert teacher.path is not None and teacher.path.parent.name == "models"
        assert not teacher.keep_reasoning
    assert sum(t.vllm.gpu_memory_utilization for t in teachers.values()) <= 0.8  # one GPU
    assert {t.name: t.licence for t in teachers.values()} == {
        "gemma-3-1b-it": "gemma",
        "gpt-oss-20b": "apache-2.0",
        "qwen3-1.7b": "apache-2.0",
    }
    assert [s.name for s in recipe.data.sources] == ["knowledge", "words", "numbers"]
    assert recipe.training.device == "auto"
    assert recipe.training.precision == "bf16"
    # real-small's shape: the smallest teacher cut to half its size, healed, then taught
    assert recipe.student.init_from_teacher == "gemma-3-1b-it"
    assert recipe.student.prune.enabled and recipe.student.prune.vocab_size
    assert recipe.student.heal.enabled and recipe.student.max_params_ratio == 0.5
