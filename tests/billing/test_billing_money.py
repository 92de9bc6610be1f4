"""Money arithmetic: integer micro-USD, charges rounded up once, exact USD parsing."""

from __future__ import annotations

import pytest

from avocado_llm.billing import MICRO, Price, charge_for, format_usd, parse_usd


def test_charge_is_exact_integer_and_rounds_up_once() -> None:
    price = Price(input_per_1m=1, output_per_1m=1)  # 1 micro-USD per 1M tokens
    assert charge_for(price, 0, 0) == 0
    assert charge_for(price, 1, 0) == 1  # a fraction of a micro-USD rounds up
    assert charge_for(price, 500_000, 500_000) == 1  # rounded once, not per part
    assert charge_for(price, 1_000_000, 1) == 2
    big = Price(input_per_1m=3 * MICRO, output_per_1m=15 * MICRO, per_request=250)
    charge = charge_for(big, 1234, 567)
    assert isinstance(charge, int)
    assert charge == 3 * 1234 + 15 * 567 + 250  # $3 and $15 per 1M: whole micro-USD per token
    assert charge_for(Price(150_000, 600_000), 1001, 1) == 151  # 150.15 + 0.6 = 150.75 → 151


def test_charge_never_below_the_exact_amount() -> None:
    price = Price(input_per_1m=333_333, output_per_1m=777_777, per_request=1)
    for p, c in [(1, 1), (7, 13), (999_999, 3), (12_345, 67_890)]:
        exact = (p * 333_333 + c * 777_777) / 1_000_000 + 1
        assert exact <= charge_for(price, p, c) < exact + 1


def test_bad_prices_and_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        Price(input_per_1m=-1, output_per_1m=0)
    with pytest.raises(ValueError, match="non-negative int"):
        Price(input_per_1m=0.5, output_per_1m=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token counts"):
        charge_for(Price(1, 1), -1, 0)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0", 0),
        ("1", MICRO),
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("$3.10", 3_100_000),
        ("1e-6", 1),
        ("0.1", 100_000),
    ],
)
def test_parse_usd_is_exact(text: str, micro: int) -> None:
    assert parse_usd(text) == micro


@pytest.mark.parametrize(
    ("text", "message"),
    [("-1", "negative"), ("0.0000001", "6 decimals"), ("abc", "not an amount"), ("inf", "finite")],
)
def test_parse_usd_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_usd(text)


def test_format_usd_round_trips() -> None:
    for micro in (0, 1, 999_999, 1_000_000, 123_456_789):
        assert parse_usd(format_usd(micro)) == micro
    assert format_usd(-1_500_000) == "-1.500000"
