"""Evaluate: score any model — a local Hugging Face directory or an OpenAI-compatible endpoint —
on the recipe's held-out tasks, and report teachers, students and baselines side by side.

- :mod:`~avocado_llm.evaluate.runner`: greedy answers and per-family scores (``EvalResult``);
- :mod:`~avocado_llm.evaluate.evaluation`: one model of a run, merged into ``report.json``
  (``avocado eval RECIPE --model DIR`` / ``--url URL --served-model NAME``);
- :mod:`~avocado_llm.evaluate.report`: ``report.json`` (schema, merge), ``report.md``,
  ``report.html`` and PNG plots (``write_report``), with optional inputs read by ``extras``
  and drawn by ``plots``;
- :mod:`~avocado_llm.evaluate.stats`: Wilson score intervals.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names load on first use: `avocado` imports this package to build its parser, and a command
# such as `avocado tasks` must not wait for torch and transformers (the runner's imports).
_SOURCES = {
    "evaluation": ("ModelEvaluation", "ModelSource", "evaluate_model"),
    "report": (
        "ROLES",
        "ReportError",
        "ReportFiles",
        "check_report",
        "load_report",
        "render_markdown",
        "update_report",
        "write_report",
    ),
    "runner": ("EvalError", "EvalResult", "FamilyScore", "evaluate_endpoint", "evaluate_examples"),
    "stats": ("wilson_interval",),
}
_EXPORTS = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = [
    "ROLES",
    "EvalError",
    "EvalResult",
    "FamilyScore",
    "ModelEvaluation",
    "ModelSource",
    "ReportError",
    "ReportFiles",
    "check_report",
    "evaluate_endpoint",
    "evaluate_examples",
    "evaluate_model",
    "load_report",
    "render_markdown",
    "update_report",
    "wilson_interval",
    "write_report",
]

if TYPE_CHECKING:
    from avocado_llm.evaluate.evaluation import ModelEvaluation, ModelSource, evaluate_model
    from avocado_llm.evaluate.report import (
        ROLES,
        ReportError,
        ReportFiles,
        check_report,
        load_report,
        render_markdown,
        update_report,
        write_report,
    )
    from avocado_llm.evaluate.runner import (
        EvalError,
        EvalResult,
        FamilyScore,
        evaluate_endpoint,
        evaluate_examples,
    )
    from avocado_llm.evaluate.stats import wilson_interval


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
