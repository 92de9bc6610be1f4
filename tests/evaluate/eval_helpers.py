"""Report entries built from known scores, for the report tests (no model needed)."""

from __future__ import annotations

from typing import Any

from avocado_llm.evaluate import EvalResult, FamilyScore


def scored(
    role: str, params: int | None, scores: dict[str, tuple[int, int]], tokens_per_s: float = 100.0
) -> dict[str, Any]:
    """A report entry for a model that got ``correct`` of ``n`` right in each family."""
    result = EvalResult()
    for family, (correct, n) in scores.items():
        result.families[family] = FamilyScore(correct, n, int(tokens_per_s * n), float(n))
    return result.entry(role, params)


TEACHERS = {
    "gemma-tiny": scored("teacher", 533_824, {"arithmetic": (2, 40), "facts": (38, 40)}),
    "qwen-tiny": scored("teacher", 533_056, {"arithmetic": (34, 40), "facts": (0, 40)}),
}
