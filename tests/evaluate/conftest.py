"""Shared by the evaluation tests: small recipes over the shipped zoo."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import Recipe, load_recipe

# The loopback endpoint server lives with the endpoint teacher's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teachers"))

RecipeFactory = Callable[..., Recipe]


@pytest.fixture
def make_recipe(tmp_path: Path, zoo_dir: Path) -> RecipeFactory:
    """``make_recipe(families=[...], **eval fields)`` → a recipe whose run directory is inside
    ``tmp_path``, with the three zoo teachers."""

    def make(families: tuple[str, ...] = ("arithmetic", "reverse"), **eval_: object) -> Recipe:
        data = {
            "name": "eval-test",
            "output_dir": str(tmp_path / "runs"),
            "world": {"families": list(families), "zoo_dir": str(zoo_dir)},
            "teachers": [
                {"name": n, "zoo": True} for n in ("gemma-tiny", "gpt-oss-tiny", "qwen-tiny")
            ],
            "harvest": {"prompts_per_family": 3, "max_new_tokens": 12, "top_logprobs": 2},
            "eval": {"heldout_per_family": 20, "max_new_tokens": 24, **eval_},
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_recipe(path)

    return make
