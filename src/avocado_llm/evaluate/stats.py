"""Confidence intervals for accuracies measured on a few hundred examples."""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""The standard normal's 97.5th percentile: two-sided 95%."""


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927).

    Unlike the normal approximation ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 1] and does not
    shrink to a point at 0 or n successes, which small evaluations hit all the time. With no
    examples nothing is known: ``(0.0, 1.0)``.
    """
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At p = 0 (p = 1) the lower (upper) bound is 0 (1) exactly: no rounding noise there.
    low = 0.0 if correct == 0 else centre - half
    high = 1.0 if correct == n else centre + half
    return low, high
