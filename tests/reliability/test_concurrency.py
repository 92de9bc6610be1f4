"""Concurrency across processes: many clients, three ``avocado serve`` processes sharing one
PostgreSQL ledger and one Redis, one small balance. The balance is never overdrawn, whatever
the interleaving; and a key's requests-per-minute limit holds across the processes (with Redis;
without it, each process counting on its own lets through about three times as many).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from rel_helpers import (
    MODEL,
    PRICE,
    SECRET,
    FakeUpstream,
    ServerProcess,
    Zygote,
    free_port,
    prepare_ledger,
    running,
)
from rel_load import audit_ledger, record_figures
from sqlalchemy import select

from avocado_llm.billing import Billing, charge_for
from avocado_llm.billing.schema import Account
from avocado_llm.testing.redistemp import RedisNotFound, TempRedis

SERVERS = 3


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        redis = TempRedis().start()
    except RedisNotFound as e:
        pytest.fail(f"the reliability tests need a Redis server: {e}", pytrace=False)
    try:
        yield redis.url
    finally:
        redis.stop()


def servers(
    zygote: Zygote, upstream: FakeUpstream, database_url: str, tmp_path: Path, env: dict[str, str]
) -> list[ServerProcess]:
    return [
        ServerProcess(zygote, free_port(), upstream.url, database_url, tmp_path / f"s{i}.log", env)
        for i in range(SERVERS)
    ]


def body(i: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": 8}  # fmt: skip


def test_one_small_balance_many_clients_three_servers_never_overdrawn(
    zygote: Zygote, upstream: FakeUpstream, pg_database: str, redis_url: str, tmp_path: Path
) -> None:
    # Worst case of one request: its prompt estimate (bytes + 32) and 8 completion tokens.
    worst = charge_for(PRICE, len(b"question 000") + 32, 8)
    credits = 40 * worst + worst // 2  # 40 worst cases, then not enough for another
    key = prepare_ledger(pg_database, credits)
    procs = servers(zygote, upstream, pg_database, tmp_path, {"AVOCADO_REDIS_URL": redis_url})
    lowest = {"balance": credits, "held": 0}
    stop = threading.Event()

    def watch() -> None:  # the balance as other sessions see it, all along
        billing = Billing(pg_database, SECRET)
        try:
            while not stop.is_set():
                with billing.engine.connect() as conn:
                    row = conn.execute(select(Account.balance, Account.held)).one()
                lowest["balance"] = min(lowest["balance"], row.balance)
                lowest["held"] = min(lowest["held"], row.held)
        finally:
            billing.close()

    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    with running(procs):
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def one(i: int) -> int:
            url = procs[i % SERVERS].url
            headers = {"Authorization": f"Bearer {key}"}
            response = httpx.post(
                f"{url}/v1/chat/completions", json=body(100 + i), headers=headers, timeout=60
            )
            code = (
                response.json().get("error", {}).get("code") if response.status_code != 200 else ""
            )
            with lock:
                statuses[f"{response.status_code} {code}".strip()] += 1
            return response.status_code

        with ThreadPoolExecutor(max_workers=48) as pool:
            list(pool.map(one, range(400)))
        for i in range(400, 450):  # then one at a time until refused: no other hold in flight
            if one(i) == 429:
                break
        stop.set()
        watcher.join(timeout=30)

    audit, events = audit_ledger(pg_database)
    assert set(statuses) <= {"200", "429 insufficient_quota"}, statuses
    assert statuses["200"] == audit.events == len(events)  # each answer charged, once
    assert statuses["429 insufficient_quota"] > 0, "the balance never ran out: test too weak"
    assert lowest["balance"] >= 0 and lowest["held"] >= 0
    assert audit.balance >= 0 and audit.held == 0 and audit.open_holds == 0
    assert audit.balance == credits - audit.charges
    assert audit.balance < worst  # spent down: less than one more request's worst case
    figures = {"servers": SERVERS, "clients": 48, "requests": sum(statuses.values())}
    figures |= {"statuses": dict(statuses), "lowest_balance": lowest["balance"]}
    record_figures("overdraft", figures | {"balance": audit.balance})


def blast(procs: list[ServerProcess], key: str, n: int) -> tuple[Counter[int], float]:
    """``n`` requests at once, spread over the servers: statuses, and seconds it took."""
    started = time.monotonic()

    def one(i: int) -> int:
        response = httpx.post(f"{procs[i % len(procs)].url}/v1/chat/completions", json=body(i),
                              headers={"Authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(response.headers["retry-after"]) >= 1
        return response.status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = Counter(pool.map(one, range(n)))
    return statuses, time.monotonic() - started


RPM = 12


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-process"])
def test_requests_per_minute_hold_across_three_servers_with_redis(
    zygote: Zygote,
    upstream: FakeUpstream,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    shared: bool,
) -> None:
    prepare_ledger(pg_database, 10**9)
    billing = Billing(pg_database, SECRET)
    try:
        key = billing.create_key("acme", rpm=RPM)[1]
    finally:
        billing.close()
    env = {"AVOCADO_REDIS_URL": redis_url} if shared else {}
    procs = servers(zygote, upstream, pg_database, tmp_path, env)
    with running(procs):
        statuses, seconds = blast(procs, key, 60)
    assert set(statuses) <= {200, 429}, statuses
    refilled = int(RPM * seconds / 60) + 1  # the bucket refills rpm/60 per second meanwhile
    if shared:
        assert RPM <= statuses[200] <= RPM + refilled, (statuses, seconds)
        audit, _ = audit_ledger(pg_database)
        assert audit.events == statuses[200]
        figures = {"servers": SERVERS, "rpm": RPM, "sent": 60, "answered": statuses[200]}
        record_figures("rpm-redis", figures | {"seconds": round(seconds, 2)})
    else:  # the control: without Redis each process has its own bucket
        assert statuses[200] > RPM + refilled, (statuses, seconds)


def test_one_idempotency_key_sent_at_once_to_three_servers_runs_once(
    zygote: Zygote, upstream: FakeUpstream, pg_database: str, tmp_path: Path
) -> None:
    """The same request with the same Idempotency-Key, 30 times at once over 3 servers (a
    client retrying too eagerly): it runs once; the others get 409 (the first still runs) or
    the stored answer; every answer is the same one, and it is charged once."""
    key = prepare_ledger(pg_database, 10**9)
    procs = servers(zygote, upstream, pg_database, tmp_path, {})
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "once-only"}
    barrier = threading.Barrier(30)

    def one(i: int) -> tuple[int, str]:
        barrier.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # retry 409s until the first attempt has finished
            response = httpx.post(f"{procs[i % SERVERS].url}/v1/chat/completions",
                                  json=body(7), headers=headers, timeout=60)  # fmt: skip
            if response.status_code != 409:
                break
            time.sleep(0.02)
        return response.status_code, response.json().get("id", "")

    with running(procs), ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(one, range(30)))
    assert {status for status, _ in answers} == {200}
    assert len({rid for _, rid in answers}) == 1
    audit, events = audit_ledger(pg_database)
    assert [e["request_id"] for e in events] == [answers[0][1]]
    assert audit.balance == audit.credits - audit.charges and audit.open_holds == 0
