"""Shared by the harvest tests: a small recipe over the shipped zoo, written as a YAML file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

RecipeFactory = Callable[..., Path]


@pytest.fixture
def write_recipe(tmp_path: Path, zoo_dir: Path) -> RecipeFactory:
    """``write_recipe(teachers=[...], families=[...], **harvest fields)`` → a recipe file whose
    run directory is inside ``tmp_path``; small by default (16 new tokens, top-5)."""

    def write(
        teachers: tuple[str, ...] = ("qwen-tiny", "gemma-tiny"),
        families: tuple[str, ...] = ("arithmetic", "reverse"),
        **harvest: object,
    ) -> Path:
        data = {
            "name": "harvest-test",
            "output_dir": str(tmp_path / "runs"),
            "world": {"families": list(families), "zoo_dir": str(zoo_dir)},
            "teachers": [
                {"name": name, "zoo": True, "licence": f"test licence of {name}"}
                for name in teachers
            ],
            "harvest": {
                "prompts_per_family": 4,
                "max_new_tokens": 16,
                "top_logprobs": 5,
                "batch_size": 4,
                "shard_size": 3,
                **harvest,
            },
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return write
