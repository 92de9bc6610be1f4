"""Money as integers: micro-USD (1 USD = ``MICRO`` units), never floats.

Prices are per model: micro-USD per 1M input tokens, per 1M output tokens, and per request.
A charge is computed exactly and rounded **up** once, to the next whole micro-USD, so the
seller never gives away a fraction and the rounding error is below one micro-USD per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MICRO = 1_000_000  # micro-USD per USD; all money is int micro-USD
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M tokens


@dataclass(frozen=True)
class Price:
    """A model's price, all in micro-USD: per 1M input tokens, per 1M output tokens, per call."""

    input_per_1m: int
    output_per_1m: int
    per_request: int = 0

    def __post_init__(self) -> None:
        for name in ("input_per_1m", "output_per_1m", "per_request"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"price {name} must be a non-negative int (micro-USD), got {value!r}"
                )


def charge_for(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """Micro-USD for one request: ``ceil((p·in + c·out) / 1M) + per_request``.

    Integer arithmetic only; the token part is rounded up once (not per part), so e.g. one
    token at 1 micro-USD per 1M tokens costs 1 micro-USD, and a million such tokens cost 1.
    """
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(
            f"token counts must be >= 0, got prompt={prompt_tokens} completion={completion_tokens}"
        )
    exact = prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m
    return -(-exact // TOKENS_PER_PRICE_UNIT) + price.per_request


def parse_usd(text: str | int | Decimal) -> int:
    """``"12.5"`` → ``12_500_000`` micro-USD, exactly (Decimal, never float).

    Refuses negatives, more than 6 decimals (a fraction of a micro-USD), and non-numbers.
    """
    try:
        value = Decimal(str(text).strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount in USD (write e.g. 12.50)") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite amount in USD")
    if value < 0:
        raise ValueError(f"{text!r} is negative; amounts must be >= 0 USD")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{text!r} has more than 6 decimals (1 micro-USD is the smallest unit)")
    return int(micro)


def format_usd(micro: int) -> str:
    """``12_500_000`` → ``"12.500000"``: exact, six decimals, sign kept."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"
