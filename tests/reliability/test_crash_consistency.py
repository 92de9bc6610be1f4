"""Crash consistency: concurrent clients that retry with an Idempotency-Key on every failure,
while ``avocado serve`` is killed with SIGKILL at random moments and restarted. Afterwards every
request a client saw succeed has exactly one usage event with the usage it saw, nothing else
was charged, balance = credits − charges to the micro-USD, no hold is open and no balance is
negative — on SQLite, on PostgreSQL, and with 2 server processes sharing PostgreSQL.

The servers forward to a fake upstream (``fake_upstream.py``) so that the CPU goes to the
server and the ledger; they are forked by ``zygote.py`` so that a restart takes a fraction of a
second. The final restart, which releases the holds the last kill left open, runs the real
``avocado serve`` command.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from rel_helpers import FakeUpstream, ServerProcess, Zygote, free_port, prepare_ledger, running
from rel_load import LoadReport, audit_ledger, check_exactly_once, record_figures, run_load

from avocado_llm.billing import MICRO


def crash_run(
    name: str,
    database_url: str,
    servers: int,
    total: int,
    kills: int,
    clients: int,
    upstream: FakeUpstream,
    zygote: Zygote,
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    key = prepare_ledger(database_url, 50 * MICRO)
    procs = [
        ServerProcess(zygote, free_port(), upstream.url, database_url, tmp_path / f"server{i}.log")
        for i in range(servers)
    ]
    report = LoadReport()
    # Random moments over the first 80% of the load, so that every kill lands before its end.
    kill_points = sorted(rng.sample(range(total // 20, total * 4 // 5), kills))
    killed: list[int] = []
    errors: list[BaseException] = []

    def killer() -> None:
        try:
            for point in kill_points:
                while report.done < point:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.02))  # a random moment, requests in flight
                victim = rng.choice(procs)
                victim.kill()
                killed.append(report.done)
                victim.start()
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    started = time.monotonic()
    with running(procs):
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        run_load(lambda: [p.url for p in procs], key, total, clients, report, seed)
        thread.join(timeout=120)
        assert not errors, f"seed {seed}: the killer failed: {errors[0]!r}"
        for p in procs:  # one last crash, after the load: whatever it leaves open is released
            p.kill()
    final = ServerProcess(None, free_port(), upstream.url, database_url, tmp_path / "final.log")
    with running([final]):  # the real `avocado serve` command: migrate, release stale holds
        final.stop()
    elapsed = time.monotonic() - started

    assert len(killed) == kills and all(k < total for k in killed), f"seed {seed}: {killed}"
    assert report.failed_attempts > 0, "no request was ever interrupted: the kills hit nothing"
    audit = check_exactly_once(report, database_url, total)
    replayed = sum(o.replayed for o in report.outcomes)
    record_figures(
        name,
        {
            "seed": seed,
            "requests": total,
            "clients": clients,
            "servers": servers,
            "kills": len(killed),
            "failed_attempts": report.failed_attempts,
            "answered_from_idempotency_store": replayed,
            "usage_events": audit.events,
            "charged_micro_usd": audit.charges,
            "balance_micro_usd": audit.balance,
            "seconds": round(elapsed, 1),
        },
    )


def test_sqlite_server_killed_10_times(
    upstream: FakeUpstream, zygote: Zygote, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    crash_run("crash-sqlite", url, 1, 2000, 10, 12, upstream, zygote, tmp_path)


def test_postgres_server_killed_10_times(
    upstream: FakeUpstream, zygote: Zygote, pg_database: str, tmp_path: Path
) -> None:
    crash_run("crash-postgres", pg_database, 1, 2000, 10, 12, upstream, zygote, tmp_path)


def test_two_servers_sharing_postgres_killed_10_times(
    upstream: FakeUpstream, zygote: Zygote, pg_database: str, tmp_path: Path
) -> None:
    crash_run("crash-postgres-2-servers", pg_database, 2, 2000, 10, 12, upstream, zygote, tmp_path)


@pytest.mark.soak
@pytest.mark.parametrize("servers", [1, 2])
def test_soak_postgres_servers_killed_40_times(
    servers: int, upstream: FakeUpstream, zygote: Zygote, pg_database: str, tmp_path: Path
) -> None:
    crash_run(
        f"soak-crash-postgres-{servers}",
        pg_database,
        servers,
        10_000,
        40,
        24,
        upstream,
        zygote,
        tmp_path,
    )


@pytest.mark.soak
def test_soak_sqlite_server_killed_40_times(
    upstream: FakeUpstream, zygote: Zygote, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    crash_run("soak-crash-sqlite", url, 1, 10_000, 40, 24, upstream, zygote, tmp_path)


def test_a_server_starting_up_does_not_let_another_serve_an_unbilled_answer(
    zygote: Zygote, pg_database: str, tmp_path: Path
) -> None:
    """The bug the 2-server crash test found, step by step: server B starts while server A
    serves a request. B used to release A's hold as one left open by a crash (A then answered
    503 rather than give its answer away unbilled). Now holds belong to A's lease: B leaves it
    alone, A answers and is charged once. (A hold released under a server that stalled past
    its lease: ``test_crash_streams.py``.)"""
    key = prepare_ledger(pg_database, 50 * MICRO)
    body = {"model": "fake", "messages": [{"role": "user", "content": "slow"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "slow-1"}
    with FakeUpstream(delay_s=0.5) as slow:  # 2 to 6 tokens, 0.5 s apart
        a, b = (
            ServerProcess(zygote, free_port(), slow.url, pg_database, tmp_path / f"{n}.log")
            for n in "ab"
        )
        with running([a]):
            answers: list[httpx.Response] = []
            first = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        f"{a.url}/v1/chat/completions", json=body, headers=headers, timeout=60
                    )
                )
            )
            first.start()
            audit_open = 0
            while audit_open == 0:  # wait until A holds credit for the request
                audit_open = audit_ledger(pg_database)[0].open_holds
                time.sleep(0.01)
            with running([b]):  # B's start-up releases only the holds of servers gone
                assert audit_ledger(pg_database)[0].open_holds == 1  # A's, still open
                first.join(timeout=60)
                answered = answers[0]
                assert answered.status_code == 200, answered.text
                retry = httpx.post(
                    f"{b.url}/v1/chat/completions", json=body, headers=headers, timeout=60
                )
                assert retry.status_code == 200, retry.text  # the stored answer, not charged
                assert retry.headers.get("idempotent-replayed") == "true"
    audit, events = audit_ledger(pg_database)
    assert [e["request_id"] for e in events] == [answered.json()["id"]]
    assert audit.balance == audit.credits - audit.charges and audit.open_holds == 0
