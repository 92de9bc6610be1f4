"""Per-key requests/minute and tokens/minute, as token buckets in this process.

Each key has two buckets that refill continuously (``rpm / 60`` requests per second, ``tpm / 60``
tokens per second) up to one minute's worth. A request takes one request and its worst-case
tokens (prompt + ``n × max_tokens``, what OpenAI counts too) from both, or from neither; the
tokens it did not use are given back when it ends. The answer carries OpenAI's
``x-ratelimit-*`` headers either way, and a refusal says when to retry.

:class:`RateLimiter` keeps the buckets in this process (the default);
:class:`~avocado_llm.serve.ratelimit_redis.RedisRateLimiter` keeps them in Redis, shared by
every server process (``AVOCADO_REDIS_URL``). Both are a :class:`Limiter`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (inf if it never will be)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)

    def until_full(self) -> float:
        return (self.capacity - self.level) * 60.0 / self.capacity


@dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    """``x-ratelimit-*`` (and ``Retry-After`` when refused) to send with the answer."""
    retry_after_s: float = 0.0
    limit: str = ""
    """``requests`` or ``tokens``: the limit that refused."""


class Limiter(Protocol):
    """What the metering needs of a rate limiter."""

    def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        """Take one request and ``tokens`` from ``key_id``'s buckets, or refuse (take neither)."""
        ...

    def refund(self, key_id: str, tpm: int | None, tokens: int) -> None:
        """Give back tokens a request reserved but did not use."""
        ...

    def close(self) -> None:
        """Let go of connections, if any."""
        ...


class RateLimiter:
    """Buckets of every key seen, in this process; safe to call from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str, int], Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        """Take one request and ``tokens`` from ``key_id``'s buckets, or refuse."""
        with self._lock:
            now = self._clock()
            limits = {"requests": (rpm, 1), "tokens": (tpm, tokens)}
            buckets = {
                kind: self._bucket(key_id, kind, limit, now)
                for kind, (limit, _) in limits.items()
                if limit is not None
            }
            waits = {kind: b.wait_for(limits[kind][1]) for kind, b in buckets.items()}
            refused = max(waits, key=lambda k: waits[k], default=None)
            if refused is not None and waits[refused] > 0:
                return refusal(buckets, refused, waits[refused])
            for kind, bucket in buckets.items():
                bucket.level -= limits[kind][1]
            return Decision(True, bucket_headers(buckets))

    def refund(self, key_id: str, tpm: int | None, tokens: int) -> None:
        """Give back tokens a request reserved but did not use."""
        if tpm is None or tokens <= 0:
            return
        with self._lock:
            bucket = self._bucket(key_id, "tokens", tpm, self._clock())
            bucket.level = min(bucket.capacity, bucket.level + tokens)

    def close(self) -> None:
        """Nothing to let go of."""

    def _bucket(self, key_id: str, kind: str, limit: int, now: float) -> Bucket:
        # The limit is part of the name, so changing a key's limit starts a fresh bucket.
        bucket = self._buckets.setdefault((key_id, kind, limit), Bucket(limit, limit, now))
        bucket.refill(now)
        return bucket


def refusal(buckets: dict[str, Bucket], limit: str, retry: float) -> Decision:
    """A 429's decision: the buckets' headers, and when to retry (none if ``retry`` is inf:
    the request alone is larger than the limit)."""
    headers = bucket_headers(buckets)
    if math.isfinite(retry):
        headers["retry-after"] = str(max(1, math.ceil(retry)))
        headers["retry-after-ms"] = str(math.ceil(retry * 1000))
    return Decision(False, headers, retry, limit)


def bucket_headers(buckets: dict[str, Bucket]) -> dict[str, str]:
    headers = {}
    for kind, b in buckets.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(int(b.capacity))
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(b.level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(b.until_full())
    return headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text
