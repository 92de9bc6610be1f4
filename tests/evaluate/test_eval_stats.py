"""Wilson score intervals against values computed by hand and published tables."""

from __future__ import annotations

import pytest

from avocado_llm.evaluate import wilson_interval


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # p = 0.5: centred, half-width 0.2634
        (0, 10, 0.0, 0.2775),  # the "rule of three" neighbourhood: not [0, 0]
        (10, 10, 0.7225, 1.0),
        (1, 10, 0.0179, 0.4042),
        (81, 263, 0.2553, 0.3662),  # Wilson's interval for 81/263 (Newcombe 1998, table I)
        (15, 148, 0.0624, 0.1605),  # Newcombe 1998, table I
        (0, 20, 0.0, 0.1611),  # Newcombe 1998, table I
        (1, 29, 0.0061, 0.1718),  # Newcombe 1998, table I
    ],
)
def test_known_values(correct: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_bounds_are_exact_at_the_edges_and_contain_the_estimate() -> None:
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    for n in (1, 2, 13, 300):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            # Swapping successes and failures mirrors the interval.
            mirror = wilson_interval(n - k, n)
            assert (lo, hi) == pytest.approx((1 - mirror[1], 1 - mirror[0]), abs=1e-12)


def test_more_examples_give_a_narrower_interval() -> None:
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]


def test_no_examples_know_nothing_and_nonsense_is_refused() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="correct=11, n=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="correct=-1"):
        wilson_interval(-1, 10)
