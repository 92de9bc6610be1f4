"""Per-key rate limits shared by every server process, through Redis (``AVOCADO_REDIS_URL``).

The same token buckets as :class:`~avocado_llm.serve.ratelimit.RateLimiter` (one minute's worth
of capacity, continuous refill, both buckets or neither, unused tokens given back, the same
``x-ratelimit-*`` headers and ``Retry-After``), kept in Redis hashes and changed only by Lua
scripts, which Redis runs atomically: two processes can never both take the last request.
The time is Redis's own clock (``TIME``), so the servers' clocks do not matter (Redis 5 or later:
scripts that read the clock and then write need its effects replication).

A bucket is a hash ``{level, updated}`` under ``<prefix>:{<key id>}:<requests|tokens>:<limit>``
(the limit is part of the name, as in process: a new limit starts a fresh bucket; the braces
keep a key's two buckets in one Redis Cluster slot). A bucket left alone for a minute is full,
so it expires after a minute: a missing bucket *is* a full one.

Calls are synchronous, one round trip to Redis each (a loopback or same-rack Redis answers in
well under a millisecond). When Redis cannot be reached the request gets a 503 rather than
skipping the limit; a refund that cannot reach Redis is logged and dropped (the key's limit is
only stricter for a minute).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from avocado_llm.serve.errors import APIError
from avocado_llm.serve.ratelimit import Bucket, Decision, bucket_headers, refusal

log = logging.getLogger("avocado.serve")

_TTL_MS = 61_000  # a bucket idle for 60 s is full again: past that, a missing one is the same

# KEYS: requests bucket, tokens bucket. ARGV: rpm ('' = no limit), tpm ('' = no limit), tokens,
# now in seconds ('' = Redis's clock), ttl in ms. Returns {allowed, refused (0 none, 1 requests,
# 2 tokens), retry seconds, requests level, tokens level}; numbers as text (Lua numbers would be
# truncated to integers on the way out).
_ACQUIRE = """
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local amounts = {1, tonumber(ARGV[3])}
local levels = {'', ''}
local worst, refused = 0, 0
for i = 1, 2 do
  local cap = caps[i]
  if cap then
    local state = redis.call('HMGET', KEYS[i], 'level', 'updated')
    local level, updated = tonumber(state[1]), tonumber(state[2])
    if level == nil or updated == nil then level, updated = cap, now end
    level = math.min(cap, level + math.max(0, now - updated) * cap / 60)
    levels[i] = level
    local wait = math.huge
    if amounts[i] <= cap then wait = math.max(0, (amounts[i] - level) * 60 / cap) end
    if wait > worst then worst, refused = wait, i end
  end
end
local allowed = 0
if refused == 0 then
  allowed = 1
  for i = 1, 2 do
    if caps[i] then
      levels[i] = levels[i] - amounts[i]
      redis.call('HSET', KEYS[i], 'level', string.format('%.17g', levels[i]),
                 'updated', string.format('%.17g', now))
      redis.call('PEXPIRE', KEYS[i], ARGV[5])
    end
  end
end
for i = 1, 2 do
  if caps[i] then levels[i] = string.format('%.17g', levels[i]) end
end
return {allowed, refused, string.format('%.17g', worst), levels[1], levels[2]}
"""

# KEYS: tokens bucket. ARGV: tpm, tokens, now ('' = Redis's clock), ttl in ms.
_REFUND = """
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level, updated = tonumber(state[1]), tonumber(state[2])
if level == nil or updated == nil then return 0 end
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local cap = tonumber(ARGV[1])
level = math.min(cap, level + math.max(0, now - updated) * cap / 60 + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level),
           'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_KINDS = ("requests", "tokens")


class RedisRateLimiter:
    """A :class:`~avocado_llm.serve.ratelimit.Limiter` whose buckets live in Redis at ``url``.

    ``clock`` (seconds) replaces Redis's clock, for tests that move time by hand; every process
    sharing the buckets must then use the same clock.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "avocado:ratelimit",
        clock: Callable[[], float] | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.prefix = prefix
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        try:
            self._redis.ping()
        except redis.RedisError as e:
            self._redis.close()
            where = _safe(url)
            raise RuntimeError(f"the rate limits' Redis at {where} does not answer: {e}") from e
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._refund = self._redis.register_script(_REFUND)

    def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        """Take one request and ``tokens`` from ``key_id``'s buckets, or refuse (take neither)."""
        limits = {"requests": rpm, "tokens": tpm}
        if rpm is None and tpm is None:
            return Decision(True, {})
        keys = [self._key(key_id, kind, limits[kind] or 0) for kind in _KINDS]
        args = [_arg(rpm), _arg(tpm), tokens, self._now(), _TTL_MS]
        try:
            allowed, refused, retry, *levels = self._acquire(keys=keys, args=args)
        except redis.RedisError as e:
            log.error("rate limiter: Redis failed: %s", e)
            raise APIError(
                503,
                "The rate limiter is unavailable; please try again shortly.",
                code="rate_limiter_unavailable",
                headers={"retry-after": "1"},
            ) from e
        buckets = {
            kind: Bucket(limit, float(level), 0.0)
            for (kind, limit), level in zip(limits.items(), levels, strict=True)
            if limit is not None
        }
        if not allowed:
            return refusal(buckets, _KINDS[int(refused) - 1], float(retry))
        return Decision(True, bucket_headers(buckets))

    def refund(self, key_id: str, tpm: int | None, tokens: int) -> None:
        """Give back tokens a request reserved but did not use."""
        if tpm is None or tokens <= 0:
            return
        try:
            key = self._key(key_id, "tokens", tpm)
            self._refund(keys=[key], args=[tpm, tokens, self._now(), _TTL_MS])
        except redis.RedisError as e:
            log.warning("rate limiter: could not give back %d tokens: %s", tokens, e)

    def close(self) -> None:
        self._redis.close()

    def _key(self, key_id: str, kind: str, limit: int) -> str:
        return f"{self.prefix}:{{{key_id}}}:{kind}:{limit}"

    def _now(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))


def _arg(limit: int | None) -> str:
    return "" if limit is None else str(limit)


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
