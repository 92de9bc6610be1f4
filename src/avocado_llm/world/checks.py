"""The tiny world's check of a recipe: its task families must be ones this world has.

The recipe's schema holds family names as plain data; the world knows which exist. The stages
that use the families (harvest's prompts, the evaluation's held-out set) and ``avocado recipe
check`` call :func:`check_families`, so an unknown name is refused before any work, with the
list of known families and the closest one.
"""

from __future__ import annotations

import difflib

from avocado_llm.config import Recipe
from avocado_llm.config.fields import Problem, RecipeError
from avocado_llm.world.tasks import FAMILIES


def family_problems(recipe: Recipe) -> list[Problem]:
    """One problem per name in ``world.families`` or ``world.unverified`` that is no family."""
    problems = []
    for where in ("families", "unverified"):
        for i, family in enumerate(getattr(recipe.world, where)):
            if family in FAMILIES:
                continue
            close = difflib.get_close_matches(family, list(FAMILIES), n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(FAMILIES)}"
            problems.append(Problem(f"world.{where}[{i}]", f"unknown task family {family!r}", fix))
    return problems


def sources_problems(recipe: Recipe) -> list[Problem]:
    """Nothing, now: a recipe whose only prompts are ``data.sources`` is read by every stage
    (harvest, fusion, training and evaluation, issue #21). Kept so that a stage that cannot
    use some recipe's prompts has one place to say so before any work."""
    del recipe
    return []


def check_families(
    recipe: Recipe,
    source: str | None = None,
    *,
    stage: bool = True,
    reads_sources: bool = False,
) -> None:
    """Raise :class:`~avocado_llm.config.fields.RecipeError` (``source``: the recipe's file, by
    default its name) if the recipe names a task family the tiny world does not have, or, for a
    ``stage`` that runs models and does not read ``data.sources`` (``reads_sources``), has no
    prompts it can use (:func:`sources_problems`)."""
    problems = family_problems(recipe)
    if stage and not reads_sources:
        problems += sources_problems(recipe)
    if problems:
        raise RecipeError(source or f"recipe {recipe.name!r}", problems)
