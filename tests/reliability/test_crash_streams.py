"""Holds belong to the server process that placed them (a lease with a heartbeat), streams
included: a server that starts while another streams an answer does not release that answer's
hold; a server that stalled past its lease, whose hold another server released, stops its
stream with an error instead of streaming on unbilled; and the holds of a server killed with
SIGKILL are released by the next server to start, or by a running server's sweep.

Real ``avocado serve`` processes (forked by the zygote) in front of a slow fake upstream
(six tokens, 0.5 s apart), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from rel_helpers import (
    MODEL,
    FakeUpstream,
    ServerProcess,
    Zygote,
    free_port,
    prepare_ledger,
    running,
)
from rel_load import audit_ledger
from sqlalchemy import select

from avocado_llm.billing import MICRO, Billing
from avocado_llm.billing.schema import HoldRow, LedgerEntry, ServerRow

SECRET = "reliability-secret-not-for-production"
PROMPT = "stream 6"  # the fake upstream answers it with 6 tokens
TOKENS = 6
DELAY_S = 0.5


@dataclass
class StreamRead:
    """One streamed answer, read in a thread as it arrives."""

    texts: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    done: bool = False
    rid: str | None = None
    broken: str | None = None  # the connection ended without the stream's end
    finished: threading.Event = field(default_factory=threading.Event)


def _read_stream(url: str, key: str, out: StreamRead) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
            "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    out.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    out.errors.append(event["error"])
                    continue
                out.rid = event.get("id", out.rid)
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        out.texts.append(text)
    except httpx.HTTPError as e:
        out.broken = repr(e)
    finally:
        out.finished.set()


@contextmanager
def streaming(url: str, key: str) -> Iterator[StreamRead]:
    out = StreamRead()
    thread = threading.Thread(target=_read_stream, args=(url, key, out), daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=90)


def _wait(condition, what: str, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _holds(database_url: str) -> list[tuple[str, str, str | None]]:
    """``(request_id, status, release reason)`` of every hold."""
    billing = Billing(database_url, SECRET)
    try:
        with billing.engine.connect() as conn:
            rows = conn.execute(
                select(HoldRow.request_id, HoldRow.status, LedgerEntry.reason)
                .outerjoin(
                    LedgerEntry,
                    (LedgerEntry.hold_id == HoldRow.id) & (LedgerEntry.kind == "release"),
                )
                .order_by(HoldRow.created_at)
            ).all()
    finally:
        billing.close()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _servers(database_url: str) -> int:
    billing = Billing(database_url, SECRET)
    try:
        with billing.engine.connect() as conn:
            return len(conn.execute(select(ServerRow.id)).all())
    finally:
        billing.close()


def _open_holds(database_url: str) -> int:
    return audit_ledger(database_url)[0].open_holds


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture(scope="module")
def slow() -> Iterator[FakeUpstream]:
    with FakeUpstream(delay_s=DELAY_S) as upstream:
        yield upstream


def test_a_server_starting_mid_stream_leaves_the_stream_and_its_hold_alone(
    slow: FakeUpstream, zygote: Zygote, ledger_url: str, tmp_path: Path
) -> None:
    """Server B starts on the same ledger while server A streams an answer: B does not
    release A's hold (A is alive), and A's answer is whole and billed exactly once. (Before
    leases, B released it, and A streamed the whole text for nothing.)"""
    key = prepare_ledger(ledger_url, 50 * MICRO)
    a, b = (
        ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / f"{n}.log")
        for n in "ab"
    )
    with running([a]), streaming(a.url, key) as read:
        _wait(lambda: _open_holds(ledger_url) == 1, "A's hold")
        with running([b]):
            assert not read.finished.is_set()  # B started while A streamed
            assert _holds(ledger_url)[0][1] == "open"  # B's start-up left A's hold alone
            _wait(read.finished.is_set, "the end of the stream")
    assert read.broken is None and read.errors == [], (read.broken, read.errors)
    assert read.done and len(read.texts) == TOKENS
    audit, events = audit_ledger(ledger_url)
    assert [(e["request_id"], e["completion_tokens"]) for e in events] == [(read.rid, TOKENS)]
    assert [h[1:] for h in _holds(ledger_url)] == [("settled", None)]  # never released
    assert audit.balance == audit.credits - audit.charges and audit.open_holds == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_server_that_stalled_past_its_lease_gives_nothing_more_unbilled(
    stream: bool, slow: FakeUpstream, zygote: Zygote, ledger_url: str, tmp_path: Path
) -> None:
    """Server A (a 1 s lease) is frozen (SIGSTOP) mid-answer for longer than its lease;
    server B starts, finds A's lease run out and releases A's hold. When A wakes up, its
    stream stops with a ``hold_released`` error event and no more text (no ``[DONE]``); a
    non-streamed answer is refused with 503. Nothing is charged, and the retry of the
    non-streamed request is charged once."""
    key = prepare_ledger(ledger_url, 50 * MICRO)
    a = ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / "a.log",
                      extra_env={"AVOCADO_LEASE_S": "1"})  # fmt: skip
    b = ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / "b.log")
    with running([a]):
        assert a.pid is not None
        with streaming(a.url, key) if stream else _posting(a.url, key) as read:
            if stream:
                _wait(lambda: len(read.texts) >= 1, "the first chunk of text")
            else:
                _wait(lambda: _open_holds(ledger_url) == 1, "A's hold")
            os.kill(a.pid, signal.SIGSTOP)
            try:
                sent_before = len(read.texts) if stream else 0
                time.sleep(1.5)  # A's lease (1 s) runs out while it is frozen
                with running([b]):  # B's start-up releases the hold of A, gone to all it knows
                    assert _holds(ledger_url)[0][1] == "released"
                    time.sleep(0.5)  # whatever A had sent before the stop has arrived by now
                    if stream:
                        assert len(read.texts) == sent_before < TOKENS
            finally:
                os.kill(a.pid, signal.SIGCONT)
            _wait(read.finished.is_set, "A's answer", timeout_s=60)
        if stream:
            assert read.broken is None, read.broken
            assert len(read.texts) == sent_before, "A streamed text after its hold was released"
            assert not read.done and [e["code"] for e in read.errors] == ["hold_released"]
        else:
            assert read.status == 503 and read.code == "hold_released", (read.status, read.code)
        audit, events = audit_ledger(ledger_url)
        assert events == [] and audit.balance == audit.credits == 50 * MICRO
        if not stream:  # a retry (A registered again under a new lease) is charged once
            retry = _post(a.url, key)
            assert retry.status_code == 200, retry.text
            events = audit_ledger(ledger_url)[1]
            assert [e["request_id"] for e in events] == [retry.json()["id"]]
    audit = audit_ledger(ledger_url)[0]
    assert audit.balance == audit.credits - audit.charges and audit.open_holds == 0


def test_a_killed_servers_holds_are_released_by_a_running_servers_sweep(
    slow: FakeUpstream, zygote: Zygote, ledger_url: str, tmp_path: Path
) -> None:
    """A is killed with SIGKILL mid-stream while B keeps running: B's sweep (every lease,
    1 s here) sees A's process gone and releases its hold, without a restart; and a server
    whose process is alive keeps its hold, however often B sweeps."""
    key = prepare_ledger(ledger_url, 50 * MICRO)
    fast_sweep = {"AVOCADO_LEASE_S": "1"}
    a = ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / "a.log")
    b = ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / "b.log",
                      extra_env=fast_sweep)  # fmt: skip
    with running([b, a]), streaming(a.url, key) as read:
        _wait(lambda: len(read.texts) >= 1, "the first chunk of text")
        time.sleep(1.2)  # one of B's sweeps (or more) while A lives and streams
        assert _holds(ledger_url)[0][1] == "open"
        a.kill()
        _wait(lambda: _open_holds(ledger_url) == 0, "B's sweep", timeout_s=30)
        assert _holds(ledger_url)[0][1] == "released"
        assert _servers(ledger_url) == 1  # B's
    assert not read.done
    audit = audit_ledger(ledger_url)[0]
    assert audit.events == 0 and audit.balance == audit.credits == 50 * MICRO


def test_a_killed_servers_holds_are_released_by_the_next_server_to_start(
    slow: FakeUpstream, zygote: Zygote, ledger_url: str, tmp_path: Path
) -> None:
    """Crash recovery keeps working with leases: A (a 30 s lease) is killed mid-stream; the
    next server started on the ledger sees A's process gone and releases its hold at once."""
    key = prepare_ledger(ledger_url, 50 * MICRO)
    a = ServerProcess(zygote, free_port(), slow.url, ledger_url, tmp_path / "a.log")
    with running([a]), streaming(a.url, key) as read:
        _wait(lambda: len(read.texts) >= 1, "the first chunk of text")
        a.kill()
        assert _open_holds(ledger_url) == 1
        a.start()  # the same port, a new process
        assert _holds(ledger_url)[0][1] == "released"
    assert not read.done
    audit = audit_ledger(ledger_url)[0]
    assert audit.events == 0 and audit.balance == audit.credits and audit.open_holds == 0


# --- a non-streamed request in a thread -----------------------------------------------------


@dataclass
class PostRead:
    status: int | None = None
    code: str | None = None
    texts: list[str] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)


def _post(url: str, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "stalled-1"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


@contextmanager
def _posting(url: str, key: str) -> Iterator[PostRead]:
    out = PostRead()

    def run() -> None:
        try:
            response = _post(url, key)
            out.status = response.status_code
            out.code = (response.json().get("error") or {}).get("code")
        finally:
            out.finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=90)
