"""What the gateway sends a vLLM server with each request (its ``vllm_xargs``, which vLLM hands
the logits processor as ``SamplingParams.extra_args``): the account's watermark, never the
server secret it is derived from. One definition of the names, read by both sides.

    body["vllm_xargs"] = to_xargs(Watermark(key, delta))    # the gateway
    mark = from_xargs(params.extra_args)                      # the logits processor
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from avocado_watermark.scheme import MASK31, Watermark, WatermarkParams

PREFIX = "avocado_watermark_"
KEY = PREFIX + "key"
DELTA = PREFIX + "delta"
GAMMA = PREFIX + "gamma"
CONTEXT = PREFIX + "context"
MIN_ENTROPY = PREFIX + "min_entropy"
NAMES = (KEY, DELTA, GAMMA, CONTEXT, MIN_ENTROPY)

MAX_DELTA = 100.0
"""The largest logit bias accepted (a plan's watermark is a few nats; beyond this the bias
would only force green tokens)."""
MAX_CONTEXT = 16
"""The longest context accepted (the scheme's default is 2)."""


def to_xargs(mark: Watermark) -> dict[str, int | float]:
    """The request arguments that carry ``mark`` (every field, so no default can drift)."""
    return {
        KEY: int(mark.key),
        DELTA: float(mark.delta),
        GAMMA: float(mark.params.gamma),
        CONTEXT: int(mark.params.context),
        MIN_ENTROPY: float(mark.params.min_entropy),
    }


def from_xargs(extra: Mapping[str, Any] | None) -> Watermark | None:
    """The watermark a request's extra arguments ask for; None when they name none (or a
    strength of 0). Raises ``ValueError`` (vLLM answers 400) for a partial, unknown or
    out-of-range one."""
    if not extra:
        return None
    given = {k: v for k, v in extra.items() if isinstance(k, str) and k.startswith(PREFIX)}
    if not given:
        return None
    unknown = sorted(set(given) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown watermark arguments: {', '.join(unknown)}")
    missing = [n for n in NAMES if n not in given]
    if missing:
        raise ValueError(f"watermark arguments missing: {', '.join(missing)}")
    key = _integer(given[KEY], KEY, 0, MASK31)
    delta = _number(given[DELTA], DELTA)
    if abs(delta) > MAX_DELTA:
        raise ValueError(f"{DELTA} must be within ±{MAX_DELTA}, not {delta}")
    params = WatermarkParams(
        gamma=_number(given[GAMMA], GAMMA),
        context=_integer(given[CONTEXT], CONTEXT, 1, MAX_CONTEXT),
        min_entropy=_number(given[MIN_ENTROPY], MIN_ENTROPY),
    )  # its own checks: gamma in (0, 1), min_entropy at least 0
    if delta == 0:
        return None
    return Watermark(key=key, delta=delta, params=params)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r:.40}")
    return value


def _number(value: Any, name: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r:.40}")
    return float(value)
