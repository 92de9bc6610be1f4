"""`avocado run` drops a baseline the recipe no longer asks for from report.json (its scores sat
beside the new baseline's after eval.baselines changed); other entries stay."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import TEACHERS, scored

from avocado_llm.evaluate import load_report, update_report
from avocado_llm.evaluate.report import update_judged
from avocado_llm.run import drop_stale_baselines


def test_a_baseline_no_longer_in_the_recipe_is_dropped(tmp_path: Path) -> None:
    old = scored("baseline", 200_000, {"arithmetic": (20, 40), "facts": (30, 40)})
    kept = {**TEACHERS, "baseline-sft": old}
    for name, entry in {**kept, "baseline-single-qwen-tiny": old}.items():
        update_report(tmp_path, name, entry, recipe="tiny")
    pairs = {"win": 1, "tie": 0, "loss": 0, "n": 1, "student": "student", "judge": "gemma-tiny"}
    update_judged(tmp_path, {"open": {"baseline-single-qwen-tiny": pairs, "gemma-tiny": pairs}})

    drop_stale_baselines(tmp_path, {"baseline-sft": (tmp_path, "baseline")})

    report = load_report(tmp_path)
    assert report["models"] == kept  # teachers stay (`avocado eval` may add some), sft stays
    assert set(report["judged"]["open"]) == {"gemma-tiny"}
    drop_stale_baselines(tmp_path / "nowhere", {})  # no report yet: nothing to do
