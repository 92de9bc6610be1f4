"""Shared by the reliability tests: clients that retry with an ``Idempotency-Key`` until
answered (through kills), and an audit of the ledger afterwards (exactly once, to the µ$).

    report = run_load(urls, total, clients)
    audit = check_exactly_once(report, database_url, total)
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rel_helpers import MODEL, PRICE, SECRET
from sqlalchemy import func, select

from avocado_llm.billing import Billing, charge_for
from avocado_llm.billing.schema import HoldRow, LedgerEntry, UsageEvent

# --- clients ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one client saw of one logical request, after all its retries."""

    index: int
    idem_key: str
    request_id: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    replayed: bool


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    failed_attempts: int = 0
    unexpected: list[str] = field(default_factory=list)
    """Answers that no retry can fix (a 4xx other than 409): each is a test failure."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return len(self.outcomes)


def request_body(index: int) -> tuple[str, dict[str, Any]]:
    """Request ``index``'s path and body: chat or completions, streamed or not."""
    text = f"request {index}: what is {index % 97} + {index % 13}?"
    stream = index % 3 == 0
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if index % 2 == 0:
        return "/v1/chat/completions", body | {"messages": [{"role": "user", "content": text}]}
    return "/v1/completions", body | {"prompt": text}


def _read_answer(text: str, stream: bool) -> tuple[str, int, int] | None:
    """``(id, prompt_tokens, completion_tokens)`` of a whole answer; None if it is cut short."""
    if not stream:
        data = json.loads(text)
        return data["id"], data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]
    rid, usage, done = None, None, False
    for line in text.splitlines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return None
        rid = rid or chunk.get("id")
        usage = chunk.get("usage") or usage
    if not done or rid is None or usage is None:
        return None
    return rid, usage["prompt_tokens"], usage["completion_tokens"]


class KeepAlive:
    """One keep-alive HTTP/1.1 connection per server, for one client thread: the standard
    library's client, which costs the load's CPU far less than httpx. Any failure closes the
    connection; the next request opens a new one."""

    def __init__(self) -> None:
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
        """``(status, Idempotent-Replayed header, body)``."""
        parsed = urllib.parse.urlsplit(url)
        conn = self.connections.get(parsed.netloc)
        if conn is None:
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
            self.connections[parsed.netloc] = conn
        try:
            conn.request("POST", parsed.path, body, headers)
            response = conn.getresponse()
            text = response.read().decode()
            return response.status, response.getheader("idempotent-replayed", ""), text
        except BaseException:
            conn.close()
            del self.connections[parsed.netloc]
            raise

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


def run_load(
    urls: Callable[[], list[str]],
    key: str,
    total: int,
    clients: int,
    report: LoadReport,
    seed: int,
) -> None:
    """``total`` logical requests from ``clients`` threads; each retries with its
    Idempotency-Key, on any server of ``urls()``, until it sees a whole answer."""
    counter = iter(range(total))
    counter_lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        client = KeepAlive()
        try:
            while True:
                with counter_lock:
                    index = next(counter, None)
                if index is None:
                    return
                _one_request(client, rng, urls, key, index, report)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _one_request(
    client: KeepAlive,
    rng: random.Random,
    urls: Callable[[], list[str]],
    key: str,
    index: int,
    report: LoadReport,
) -> None:
    path, body = request_body(index)
    payload = json.dumps(body).encode()
    idem_key = f"req-{index}-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem_key,
               "Content-Type": "application/json"}  # fmt: skip
    attempts = 0
    while True:
        attempts += 1
        assert attempts < 2000, f"request {index} never succeeded"
        url = rng.choice(urls())
        try:
            status, replayed, text = client.post(url + path, payload, headers)
            if status == 200:
                answer = _read_answer(text, body["stream"])
                if answer is not None:
                    outcome = Outcome(index, idem_key, *answer, attempts, replayed == "true")
                    with report.lock:
                        report.outcomes.append(outcome)
                    return
            elif status not in (409, 429) and status < 500:
                with report.lock:
                    report.unexpected.append(f"{index}: {status} {text}")
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass  # the server died under us: retry with the same Idempotency-Key
        with report.lock:
            report.failed_attempts += 1
        time.sleep(rng.uniform(0.01, 0.08))


# --- the audit ----------------------------------------------------------------------------


@dataclass
class Audit:
    events: int
    charges: int
    credits: int
    balance: int
    held: int
    open_holds: int
    entries_sum: int


def audit_ledger(database_url: str, account: str = "acme") -> tuple[Audit, list[dict[str, Any]]]:
    """The ledger's totals for the account and its usage events (straight from the database)."""
    billing = Billing(database_url, SECRET)
    try:
        info = billing.account_info(account)
        with billing.engine.connect() as conn:
            aid = info["id"]
            charges = conn.scalar(
                select(func.coalesce(func.sum(UsageEvent.charge), 0)).where(
                    UsageEvent.account_id == aid
                )
            )
            credits = conn.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.account_id == aid, LedgerEntry.kind == "credit"
                )
            )
            entries = conn.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.account_id == aid
                )
            )
            open_holds = conn.scalar(
                select(func.count()).where(HoldRow.account_id == aid, HoldRow.status == "open")
            )
        events = billing.usage(account)
    finally:
        billing.close()
    audit = Audit(
        events=len(events), charges=int(charges), credits=int(credits),
        balance=int(info["balance"]), held=int(info["held"]), open_holds=int(open_holds),
        entries_sum=int(entries),
    )  # fmt: skip
    return audit, events


def check_exactly_once(report: LoadReport, database_url: str, total: int) -> Audit:
    """Every request a client saw succeed has exactly one usage event, with the usage the
    client saw and the price's charge; nothing else was charged; the money adds up."""
    assert not report.unexpected, report.unexpected[:5]
    assert report.done == total
    audit, events = audit_ledger(database_url)
    by_request = {e["request_id"]: e for e in events}
    assert len(by_request) == len(events)  # (a unique column: a second event cannot exist)
    seen = {o.request_id: o for o in report.outcomes}
    assert len(seen) == total, "two logical requests were answered with the same request id"
    missing = sorted(set(seen) - set(by_request))
    extra = sorted(set(by_request) - set(seen))
    assert not missing, f"{len(missing)} answered requests have no usage event: {missing[:3]}"
    assert not extra, f"{len(extra)} usage events of no answered request (charged twice?)"
    for rid, outcome in seen.items():
        event = by_request[rid]
        assert (event["prompt_tokens"], event["completion_tokens"]) == (
            outcome.prompt_tokens,
            outcome.completion_tokens,
        ), rid
        assert event["charge"] == charge_for(PRICE, outcome.prompt_tokens,
                                             outcome.completion_tokens), rid  # fmt: skip
    assert audit.open_holds == 0 and audit.held == 0
    assert audit.balance == audit.credits - audit.charges  # to the micro-USD
    assert audit.entries_sum == audit.balance
    assert audit.balance >= 0
    return audit


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Append a test's figures to ``RELIABILITY_FIGURES`` (a JSON-lines file), if set, so that
    RELIABILITY.md can quote the last run."""
    path = os.environ.get("RELIABILITY_FIGURES")
    line = json.dumps({"test": name, **figures})
    print(f"figures: {line}")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
