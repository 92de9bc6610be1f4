"""Unverified families are fused without gold: wrong gold there changes no decision, ``verify``
falls back to ``vote``, and only the evaluation-only ``target_accuracy`` sees the difference."""

from __future__ import annotations

import pytest

from avocado_llm.fusion import fuse
from avocado_llm.fusion.records import group_prompts

UNVERIFIED = {"facts", "units"}


def build(records, gold_of):
    """Three teachers on units (gemma right, qwen off by 10 on half) and facts (gemma right),
    plus one verified arithmetic prompt."""
    r = records()
    for i in range(6):
        right = str(1000 * (i + 1))
        r.add("gemma", f"u{i}", right, family="units", gold=gold_of(right), logprob=-0.05)
        qwen = right if i % 2 else right[:-1]
        r.add("qwen", f"u{i}", f"The answer is {qwen}.", family="units", gold=gold_of(right))
        r.add("oss", f"u{i}", right if i < 3 else "7", family="units", gold=gold_of(right))
    for i in range(4):
        capital = f"Ostrel{i}"
        r.add("gemma", f"f{i}", capital, family="facts", gold=gold_of(capital))
        r.add("qwen", f"f{i}", "The answer is 40.", family="facts", gold=gold_of(capital))
    r.add("qwen", "a", "The answer is 8.", gold="8").add("gemma", "a", "9", gold="8")
    return r.table()


def test_wrong_gold_on_unverified_families_changes_no_decision(records, fake_scorer) -> None:
    right = build(records, lambda gold: gold)
    wrong = build(records, lambda gold: gold + "0")  # deliberately wrong everywhere there
    scorers = {t: fake_scorer({}) for t in ("gemma", "qwen", "oss")}
    for strategy in ("verify", "vote", "min_ce", "judge", "all", "single:qwen"):
        kwargs = {"unverified": UNVERIFIED, "scorers": scorers, "judge": "gemma"}
        with_right, report_right = fuse(right, strategy, **kwargs)
        with_wrong, report_wrong = fuse(wrong, strategy, **kwargs)
        assert with_right == with_wrong, strategy
        for family in ("units", "facts"):
            decisions_right = report_right.families[family]
            decisions_wrong = report_wrong.families[family]
            assert decisions_right.wins == decisions_wrong.wins
            assert decisions_right.reliability == decisions_wrong.reliability
    # The evaluation-only diagnostics do read gold: all of vote's targets now look wrong.
    _, report = fuse(wrong, "vote", unverified=UNVERIFIED)
    assert report.families["units"].target_accuracy == 0.0
    assert report.to_dict()["diagnostics"]["note"].startswith("evaluation data")


def test_verify_falls_back_to_vote_on_unverified_families(records) -> None:
    table = build(records, lambda gold: gold)
    verified, report = fuse(table, "verify", unverified=UNVERIFIED)
    voted, _ = fuse(table, "vote", unverified=UNVERIFIED)

    strategies = {ex.family: ex.strategy for ex in verified}
    assert strategies == {"units": "vote", "facts": "vote", "arithmetic": "verify"}
    assert [ex for ex in verified if ex.family != "arithmetic"] == [
        ex for ex in voted if ex.family != "arithmetic"
    ]
    assert report.families["units"].target_accuracy == 1.0  # gemma wins the km prompts
    assert report.families["facts"].target_accuracy == 1.0
    # Once units is verified, verify reads gold there: reliability is now accuracy.
    _, graded = fuse(table, "verify", unverified={"facts"})
    assert graded.families["units"].reliability == {"gemma": 1.0, "oss": 0.5, "qwen": 0.5}


def test_gold_is_not_even_loaded_for_unverified_families(records) -> None:
    prompts = group_prompts(build(records, lambda gold: gold), UNVERIFIED)
    assert {p.family for p in prompts if p.gold is None} == UNVERIFIED
    assert all(p.gold is not None for p in prompts if p.family == "arithmetic")


def test_unknown_unverified_family_is_refused(records) -> None:
    with pytest.raises(ValueError, match="unknown families"):
        fuse(build(records, lambda gold: gold), "vote", unverified={"unit"})
