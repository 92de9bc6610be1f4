"""Rate limits shared through a real redis-server: the Redis limiter behaves exactly like the
in-process one, and two servers on one Redis enforce one limit between them over HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from serve_helpers import SECRET, World, run_server

from avocado_llm.billing import Billing
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.errors import APIError
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.serve.ratelimit import RateLimiter
from avocado_llm.serve.ratelimit_redis import RedisRateLimiter
from avocado_llm.testing.redistemp import TempRedis

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]
MODEL = "qwen-tiny"  # the session engine's (conftest)


@pytest.fixture
def redis_url(redis_server: TempRedis) -> Iterator[str]:
    """The session's Redis, emptied for each test."""
    redis.Redis.from_url(redis_server.url).flushdb()
    yield redis_server.url


class Clock:
    """Time that moves only when told (shared by limiters in one test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_redis_limiter_refills_refunds_and_says_when_to_retry(redis_url: str) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(redis_url, clock=clock)
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    refused = limiter.acquire("k", rpm=2, tpm=None, tokens=10)
    assert not refused.allowed and refused.limit == "requests"
    assert refused.headers["retry-after"] == "30" and refused.retry_after_s == pytest.approx(30)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 30.0  # half a minute refills one request
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    assert limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    assert not limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    limiter.refund("t", tpm=100, tokens=80)  # the first used only 10 of its 90
    assert limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    too_big = limiter.acquire("t", rpm=None, tpm=100, tokens=1000)
    assert not too_big.allowed and too_big.limit == "tokens"
    assert "retry-after" not in too_big.headers
    assert limiter.acquire("free", rpm=None, tpm=None, tokens=10**9).allowed
    limiter.close()


def test_redis_limiter_takes_both_buckets_or_neither(redis_url: str) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(redis_url, clock=clock)
    assert limiter.acquire("k", rpm=3, tpm=100, tokens=60).allowed
    refused = limiter.acquire("k", rpm=3, tpm=100, tokens=60)  # tokens refuse
    assert not refused.allowed and refused.limit == "tokens"
    # The refused request took no request either: two more small ones fit the rpm of 3.
    first = limiter.acquire("k", rpm=3, tpm=100, tokens=1)
    assert first.allowed and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert limiter.acquire("k", rpm=3, tpm=100, tokens=1).allowed
    assert limiter.acquire("k", rpm=3, tpm=100, tokens=1).limit == "requests"
    limiter.close()


def test_redis_limiter_matches_the_in_process_limiter_step_for_step(redis_url: str) -> None:
    """The same random calls at the same (hand-moved) times: same decisions, same headers."""
    clock = Clock()
    rng = random.Random(7)
    local = RateLimiter(clock=clock)
    shared = RedisRateLimiter(redis_url, clock=clock)
    keys = [("a", 5, None), ("b", None, 300), ("c", 4, 200)]
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.3, 2.5, 11.0, 70.0])
        key_id, rpm, tpm = rng.choice(keys)
        if rng.random() < 0.3:
            tokens = rng.randint(0, 120)
            local.refund(key_id, tpm, tokens)
            shared.refund(key_id, tpm, tokens)
            continue
        tokens = rng.choice([1, 20, 90, 150, 250, 400])
        expected = local.acquire(key_id, rpm, tpm, tokens)
        got = shared.acquire(key_id, rpm, tpm, tokens)
        assert got.allowed == expected.allowed and got.limit == expected.limit
        assert got.headers == expected.headers
        assert got.retry_after_s == pytest.approx(expected.retry_after_s)
    shared.close()


def test_two_limiters_on_one_redis_never_grant_more_than_the_limit(redis_url: str) -> None:
    """Threads of two limiters (as of two processes) race for 25 requests: exactly 25 win."""
    clock = Clock()
    limiters = [RedisRateLimiter(redis_url, clock=clock) for _ in range(2)]
    granted: list[bool] = []
    lock = threading.Lock()

    def hammer(limiter: RedisRateLimiter) -> None:
        for _ in range(30):
            allowed = limiter.acquire("race", rpm=25, tpm=None, tokens=1).allowed
            with lock:
                granted.append(allowed)

    threads = [threading.Thread(target=hammer, args=(lim,)) for lim in limiters for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 180 and sum(granted) == 25
    for limiter in limiters:
        limiter.close()


def test_redis_limiter_on_redis_time_and_when_redis_is_gone() -> None:
    with TempRedis() as server:
        url = server.url
        limiter = RedisRateLimiter(url)  # Redis's own clock
        assert limiter.acquire("k", rpm=1, tpm=None, tokens=1).allowed
        refused = limiter.acquire("k", rpm=1, tpm=None, tokens=1)
        assert not refused.allowed and int(refused.headers["retry-after"]) >= 1
    with pytest.raises(APIError) as e:  # the server is stopped: refuse, never skip the limit
        limiter.acquire("k", rpm=1, tpm=None, tokens=1)
    assert e.value.status == 503 and e.value.code == "rate_limiter_unavailable"
    limiter.refund("k", tpm=10, tokens=5)  # a lost refund is only logged
    limiter.close()
    with pytest.raises(RuntimeError, match="does not answer"):
        RedisRateLimiter(url)


@pytest.fixture
def two_servers(
    engine: LocalEngine, billing: Billing, database_url: str, redis_url: str, zoo_dir: Path
) -> Iterator[tuple[World, World]]:
    """Two apps (each with its own ledger connection and Redis limiter) on one ledger and one
    Redis, each served on its own loopback port, as two server processes would be."""
    config = ServeSettings(
        model_dir=zoo_dir / MODEL,
        model_name=MODEL,
        database_url=database_url,
        secret=SECRET,
        redis_url=redis_url,
    )
    second_ledger = Billing(config.database_url, SECRET)
    key_id, key = billing.create_key("acme")
    apps = [create_app(config, engine=engine, billing=b) for b in (billing, second_ledger)]
    try:
        with run_server(apps[0]) as url_a, run_server(apps[1]) as url_b:
            worlds = tuple(World(url, billing, MODEL, key, key_id) for url in (url_a, url_b))
            yield worlds  # type: ignore[misc]
            for world in worlds:
                for client in world.clients:
                    client.close()
    finally:
        second_ledger.close()


def test_rpm_is_shared_by_two_servers(two_servers: tuple[World, World]) -> None:
    """rpm=5 across both servers: of 12 requests at once, split between them, exactly 5 run."""
    a, b = two_servers
    _, key = a.new_key(rpm=5)

    async def one(world: World) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(
                f"{world.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": QUESTION, "max_tokens": 4},
            )

    async def all_at_once() -> list[httpx.Response]:
        return await asyncio.gather(*(one(a if i % 2 else b) for i in range(12)))

    answers = asyncio.run(all_at_once())
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 7
    for r in refused:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["type"] == "requests"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == [0, 1, 2, 3, 4]  # one count, whichever server answered
    assert len(a.billing.usage(a.account)) == 5  # only what ran was charged
    # The official client sees the same 429 from either server.
    for world in (a, b):
        with pytest.raises(openai.RateLimitError) as e:
            world.client(key).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        assert e.value.code == "rate_limit_exceeded"


def test_unused_tokens_are_given_back_to_the_shared_bucket(
    two_servers: tuple[World, World],
) -> None:
    """tpm=300 and requests reserving 220 each: the second (on the other server) fits only
    because the first gave back what it did not use."""
    a, b = two_servers
    _, key = a.new_key(tpm=300)
    first = a.client(key).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=200, temperature=0.0
    )
    used = first.parse().usage
    assert used is not None and used.total_tokens < 100  # a short answer
    reserved = used.prompt_tokens + 200
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 300 - reserved
    # Without the refund 300 - reserved = 80 tokens were left, far from 220 (28 s of refill).
    second = b.client(key).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=200, temperature=0.0
    )
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 300 - used.total_tokens - reserved
    assert second.headers["x-ratelimit-limit-tokens"] == "300"
