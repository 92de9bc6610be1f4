"""Recipes: one YAML file describes a whole run, loaded into typed, documented dataclasses.

``load_recipe(path, overrides)`` reads a recipe; every problem in it (unknown keys, wrong types,
bad values, missing files, conflicts between fields) is collected and raised at once as one
``RecipeError`` whose lines give the key's path, what is wrong and how to fix it.
``avocado recipe explain`` prints ``describe(Recipe)``: every field with its type, default and
docstring.

The package: ``fields`` (the generic machinery: problems, the YAML loader, the type-driven
converter, field documentation), ``schema`` (the recipe's dataclasses and their checks), with
three of its parts in their own modules — ``sources`` (the ``data`` section: your own prompt
sources), ``student`` (the student and training sections), ``teacher_options`` (a teacher's vLLM
and prompt-template options) —, and ``loader`` (reading, overriding, validating and saving
recipes).
"""

from avocado_llm.config.fields import Check, Problem, RecipeError, describe, field_docs
from avocado_llm.config.loader import (
    load_recipe,
    load_recipe_or_report,
    recipe_from_dict,
    recipe_to_dict,
)
from avocado_llm.config.schema import (
    DEFAULT_FAMILIES,
    STRATEGIES,
    EvalConfig,
    FusionConfig,
    HarvestConfig,
    Recipe,
    ServeConfig,
    StudentConfig,
    TeacherConfig,
    TrainingConfig,
    WorldConfig,
)
from avocado_llm.config.sources import DataConfig, SourceConfig

__all__ = [
    "DEFAULT_FAMILIES",
    "STRATEGIES",
    "Check",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "HarvestConfig",
    "Problem",
    "Recipe",
    "RecipeError",
    "ServeConfig",
    "SourceConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainingConfig",
    "WorldConfig",
    "describe",
    "field_docs",
    "load_recipe",
    "load_recipe_or_report",
    "recipe_from_dict",
    "recipe_to_dict",
]
