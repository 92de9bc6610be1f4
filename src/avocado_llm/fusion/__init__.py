"""Fusion: for every harvested prompt, which teacher answer to learn and from whom, how much.

``fuse(records, strategy, unverified=...)`` turns the records of a harvest into
:class:`FusedExample`\\ s — a target text and per-teacher weights for token-level distillation —
and a :class:`FusionReport`; ``write_fused`` / ``read_fused`` keep them on disk
(``avocado fuse RECIPE``). Strategies: ``verify``, ``vote``, ``min_ce``, ``judge``, ``all`` and
``single:<teacher>`` (:mod:`avocado_llm.fusion.strategies` describes each).

``fuse_recipe(recipe)`` is the stage as both ``avocado fuse`` and ``avocado run`` call it: the
recipe's own harvest in, its fused file (with a fingerprint of what made it) out.

Most real prompts have no verifier, so the families named in ``world.unverified`` are fused
without gold: fusion never reads it there, and evaluation alone does.
"""

from avocado_llm.fusion.example import FamilyReport, FusedExample, FusionError, FusionReport
from avocado_llm.fusion.fuse import fuse
from avocado_llm.fusion.recipe import Fused, fuse_recipe, fusion_fingerprint, recipe_records
from avocado_llm.fusion.scoring import Scorer
from avocado_llm.fusion.store import read_fused, read_report, strategy_slug, write_fused
from avocado_llm.fusion.strategies import STRATEGIES, scorers_needed

__all__ = [
    "STRATEGIES",
    "FamilyReport",
    "Fused",
    "FusedExample",
    "FusionError",
    "FusionReport",
    "Scorer",
    "fuse",
    "fuse_recipe",
    "fusion_fingerprint",
    "read_fused",
    "read_report",
    "recipe_records",
    "scorers_needed",
    "strategy_slug",
    "write_fused",
]
