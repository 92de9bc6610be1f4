"""Balanced draws: equal shares per family (the tiny recipe, unchanged) or, opt-in, shares that
grow with a family's fused examples at a temperature (``training.balance_temperature``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from avocado_llm.config import RecipeError, load_recipe
from avocado_llm.config.fingerprint import changes
from avocado_llm.distill.batches import DistillItem
from avocado_llm.distill.pipeline import distill_fingerprint
from avocado_llm.distill.train import sampling_weights, step_indices

ROOT = Path(__file__).resolve().parents[2]

SIZES = [700, 300, 1200, 50, 900, 400]
"""Six families of unequal size, like the tiny world's fused examples."""

# Drawn by the code before balance_temperature existed (seed 0, batch 8, one micro-batch).
PINNED = {
    0: [3478, 2472, 1907, 3359, 2243, 2922, 721, 1127],
    1: [256, 804, 821, 718, 2216, 459, 1918, 2475],
    5999: [3198, 2963, 74, 2220, 1571, 420, 752, 3253],
}


def _items(sizes: list[int]) -> list[DistillItem]:
    return [DistillItem([1], [1], 0, group=f"g{i}") for i, n in enumerate(sizes) for _ in range(n)]


def _shares(items: list[DistillItem], temperature: float | None) -> dict[str, float]:
    weights = sampling_weights(items, True, temperature)
    assert weights is not None
    totals: Counter[str] = Counter()
    for item, w in zip(items, weights.tolist(), strict=True):
        totals[item.group] += w
    whole = sum(totals.values())
    return {g: v / whole for g, v in totals.items()}


def test_tiny_recipe_draw_order_is_unchanged() -> None:
    cfg = load_recipe(ROOT / "recipes" / "tiny.yaml").training
    assert cfg.balance_families is True
    assert cfg.balance_temperature is None
    items = _items(SIZES)
    weights = sampling_weights(items, cfg.balance_families, cfg.balance_temperature)
    for step, expected in PINNED.items():
        assert step_indices(0, step, len(items), 8, 1, weights) == [expected]


def test_tiny_student_stays_current() -> None:
    """A student trained before the field existed is not made stale by it (make demo reuses it)."""
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    fp = distill_fingerprint(recipe, "verify", True, ROOT / "runs/tiny/fusion/verify.parquet")
    # A student's stored fingerprint from before the field has no such key: unset, it stays out.
    assert "training.balance_temperature" not in fp
    older = {k: v for k, v in fp.items() if k != "training.balance_temperature"}
    assert changes(older, fp) == []
    tempered = distill_fingerprint(
        load_recipe(ROOT / "recipes" / "tiny.yaml", ["training.balance_temperature=2"]),
        "verify",
        True,
        ROOT / "runs/tiny/fusion/verify.parquet",
    )
    assert changes(older, tempered) != []


def test_temperature_one_is_proportional_and_large_is_equal() -> None:
    items = _items([100, 900])
    assert _shares(items, 1.0) == pytest.approx({"g0": 0.1, "g1": 0.9})
    assert _shares(items, 2.0) == pytest.approx({"g0": 0.25, "g1": 0.75})  # sqrt: 10 : 30
    assert _shares(items, 1e9) == pytest.approx({"g0": 0.5, "g1": 0.5})
    assert _shares(items, None) == pytest.approx({"g0": 0.5, "g1": 0.5})


def test_draws_follow_the_tempered_shares() -> None:
    items = _items([100, 900])
    weights = sampling_weights(items, True, 2.0)
    drawn = Counter(
        items[i].group
        for s in range(200)
        for i in step_indices(0, s, len(items), 32, 1, weights)[0]
    )
    assert drawn["g0"] / sum(drawn.values()) == pytest.approx(0.25, abs=0.02)
    # within a family every item is equally likely
    assert (
        len({w for item, w in zip(items, weights.tolist(), strict=True) if item.group == "g1"}) == 1
    )


def test_off_and_single_family_draw_uniformly() -> None:
    assert sampling_weights(_items([5, 7]), False, 1.5) is None
    assert sampling_weights(_items([5]), True, 1.5) is None
    with pytest.raises(ValueError, match="> 0"):
        sampling_weights(_items([5, 7]), True, 0.0)


def test_recipe_refuses_a_non_positive_temperature() -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(ROOT / "recipes" / "tiny.yaml", ["training.balance_temperature=0"])
    assert "training.balance_temperature" in {p.path for p in caught.value.problems}


def test_the_temperature_is_in_the_students_fingerprint() -> None:
    recipe = load_recipe(ROOT / "recipes" / "own-data.yaml", ["training.balance_temperature=1.5"])
    fp = distill_fingerprint(recipe, "verify", True, ROOT / "nothing.parquet")
    assert fp["training.balance_temperature"] == 1.5


def test_family_weights_scale_the_shares() -> None:
    items = _items([100, 900, 300])

    def shares(weights: dict[str, float], temperature: float | None) -> dict[str, float]:
        w = sampling_weights(items, True, temperature, weights)
        assert w is not None
        totals: Counter[str] = Counter()
        for item, x in zip(items, w.tolist(), strict=True):
            totals[item.group] += x
        return {g: v / sum(totals.values()) for g, v in totals.items()}

    assert shares({"g0": 3.0}, None) == pytest.approx({"g0": 0.6, "g1": 0.2, "g2": 0.2})
    assert shares({"g1": 0.5, "g2": 2.0}, None) == pytest.approx(
        {"g0": 1 / 3.5, "g1": 0.5 / 3.5, "g2": 2 / 3.5}
    )
    # on top of a temperature: T = 1 is proportional (1 : 9 : 3), then g0 counts twice
    assert shares({"g0": 2.0}, 1.0) == pytest.approx({"g0": 2 / 14, "g1": 9 / 14, "g2": 3 / 14})
    # a weight for a family this run does not have changes nothing
    assert shares({"absent": 5.0}, None) == pytest.approx({"g0": 1 / 3, "g1": 1 / 3, "g2": 1 / 3})


def test_family_weights_without_balance_weigh_each_example() -> None:
    items = _items([100, 900])
    weights = sampling_weights(items, False, None, {"g0": 9.0})
    assert weights is not None
    assert weights[0].item() == 9.0 and weights[-1].item() == 1.0
    assert sampling_weights(items, False, None, {"g0": 1.0}) is None  # all equal: uniform
    with pytest.raises(ValueError, match="finite number > 0"):
        sampling_weights(items, True, None, {"g1": 0.0})


def test_unweighted_draws_are_unchanged_by_an_empty_mapping() -> None:
    items = _items(SIZES)
    weights = sampling_weights(items, True, None, {})
    for step, expected in PINNED.items():
        assert step_indices(0, step, len(items), 8, 1, weights) == [expected]


def test_recipe_checks_family_weights() -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(ROOT / "recipes" / "own-data.yaml", ["training.family_weights.suport=2"])
    (problem,) = [p for p in caught.value.problems if "family_weights" in p.path]
    assert problem.path == "training.family_weights.suport"
    assert "support" in problem.fix  # did you mean
    with pytest.raises(RecipeError) as caught:
        load_recipe(ROOT / "recipes" / "tiny.yaml", ["training.family_weights.facts=-1"])
    assert "training.family_weights.facts" in {p.path for p in caught.value.problems}


def test_family_weights_are_in_the_students_fingerprint() -> None:
    plain = load_recipe(ROOT / "recipes" / "tiny.yaml")
    fp = distill_fingerprint(plain, "verify", True, ROOT / "nothing.parquet")
    assert not any(k.startswith("training.family_weights") for k in fp)
    weighted = load_recipe(ROOT / "recipes" / "tiny.yaml", ["training.family_weights.facts=2"])
    fp2 = distill_fingerprint(weighted, "verify", True, ROOT / "nothing.parquet")
    assert fp2["training.family_weights.facts"] == 2.0
    assert changes(fp, fp2) != []
