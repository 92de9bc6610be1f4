"""Holds, settlement and release: worst case up front, actual usage after, exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from billing_helpers import MODEL, PRICE, SECRET, assert_ledger_consistent, make_customer
from sqlalchemy import func, select, update

from avocado_llm.billing import (
    Billing,
    BillingError,
    IdempotencyInProgress,
    InsufficientCredit,
    KeyRefused,
    UnknownPrice,
    charge_for,
)
from avocado_llm.billing.schema import ApiKey, HoldRow, ServerRow, UsageEvent, utcnow


def _events(billing: Billing, request_id: str) -> int:
    with billing.engine.connect() as conn:
        query = select(func.count()).where(UsageEvent.request_id == request_id)
        return int(conn.scalar(query))


def test_hold_takes_the_worst_case_and_settle_charges_the_usage(billing: Billing) -> None:
    c = make_customer(billing, credits=1_000_000)
    worst = charge_for(PRICE, 100, 200)
    hold = billing.hold(c.info, MODEL, 100, 200, "req-1")
    assert hold.amount == worst and hold.request_id == "req-1"
    assert billing.account_info("acme")["balance"] == 1_000_000 - worst
    assert billing.account_info("acme")["held"] == worst
    assert_ledger_consistent(billing, "acme")

    charge = billing.settle(hold, 100, 37)
    assert charge == charge_for(PRICE, 100, 37) < worst
    assert billing.balance("acme") == 1_000_000 - charge
    assert billing.account_info("acme")["held"] == 0
    [event] = billing.usage("acme")
    assert (event["request_id"], event["charge"], event["completion_tokens"]) == (
        "req-1",
        charge,
        37,
    )
    assert_ledger_consistent(billing, "acme")


def test_a_hold_checks_the_key_again_in_the_same_statement(billing: Billing) -> None:
    """A key revoked or expired after it was looked up (the server's key cache) places no
    hold: KeyRefused (401), nothing held, nothing charged; a usable key still holds."""
    c = make_customer(billing, credits=1_000_000)
    _, other = billing.create_key("acme")
    other_info = billing.authenticate(other)
    assert other_info is not None
    billing.revoke_key(c.info.key_id)
    with pytest.raises(KeyRefused):
        billing.hold(c.info, MODEL, 10, 50, "req-revoked")
    with billing.engine.begin() as conn:  # expired a second ago
        conn.execute(
            update(ApiKey)
            .where(ApiKey.id == other_info.key_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with pytest.raises(KeyRefused) as e:
        billing.hold(other_info, MODEL, 10, 50, "req-expired")
    assert e.value.status == 401 and e.value.code == "invalid_api_key"
    assert billing.balance("acme") == 1_000_000
    assert billing.account_info("acme")["held"] == 0
    assert billing.open_holds() == []
    _, fresh = billing.create_key("acme")
    fresh_info = billing.authenticate(fresh)
    assert fresh_info is not None
    billing.release(billing.hold(fresh_info, MODEL, 10, 50, "req-ok"))
    with pytest.raises(InsufficientCredit):  # a usable key without the credit: still 429
        billing.hold(fresh_info, MODEL, 10**9, 10**9, "req-big")
    assert_ledger_consistent(billing, "acme")


def test_settle_is_exactly_once(billing: Billing) -> None:
    c = make_customer(billing)
    hold = billing.hold(c.info, MODEL, 10, 50, "req-1")
    first = billing.settle(hold, 10, 20)
    balance = billing.balance("acme")
    assert billing.settle(hold, 10, 50) == first  # a second settle is a no-op
    billing.release(hold)  # so is a release after settling
    assert billing.balance("acme") == balance
    assert _events(billing, "req-1") == 1
    assert_ledger_consistent(billing, "acme")


def test_release_refunds_everything_and_writes_no_usage(billing: Billing) -> None:
    c = make_customer(billing, credits=500_000)
    hold = billing.hold(c.info, MODEL, 10, 50, "req-1")
    billing.release(hold)
    billing.release(hold)
    assert billing.settle(hold, 10, 50) == 0  # too late: the hold was released
    assert billing.balance("acme") == 500_000
    assert _events(billing, "req-1") == 0
    assert_ledger_consistent(billing, "acme")


def test_settle_and_release_racing_close_a_hold_once(billing: Billing) -> None:
    c = make_customer(billing)
    holds = [billing.hold(c.info, MODEL, 10, 100, f"req-{i}") for i in range(12)]
    with ThreadPoolExecutor(8) as pool:
        settles = [pool.submit(billing.settle, h, 10, 60) for h in holds]
        more = [pool.submit(billing.settle, h, 10, 90) for h in holds]
        releases = [pool.submit(billing.release, h) for h in holds]
        charges = [
            (s.result(), m.result(), r.result())
            for s, m, r in zip(settles, more, releases, strict=True)
        ]
    for hold, (a, b, _) in zip(holds, charges, strict=True):
        assert _events(billing, hold.request_id) in (0, 1)
        assert {a, b} <= {0, charge_for(PRICE, 10, 60), charge_for(PRICE, 10, 90)}
    assert_ledger_consistent(billing, "acme")


def test_charge_is_capped_at_the_hold_and_uses_the_quoted_price(billing: Billing) -> None:
    c = make_customer(billing)
    hold = billing.hold(c.info, MODEL, 10, 20, "req-1")
    billing.set_price(MODEL, PRICE.input_per_1m * 10, PRICE.output_per_1m * 10, 0)  # new price
    assert billing.settle(hold, 10, 15) == charge_for(PRICE, 10, 15)  # the price when held
    hold = billing.hold(c.info, MODEL, 10, 20, "req-2")
    assert billing.settle(hold, 10, 10_000) == hold.amount  # more than max_tokens: capped
    assert_ledger_consistent(billing, "acme")


def test_refusals(billing: Billing) -> None:
    c = make_customer(billing, credits=charge_for(PRICE, 100, 100))
    with pytest.raises(UnknownPrice, match="no-such-model") as e:
        billing.hold(c.info, "no-such-model", 1, 1, "req-0")
    assert e.value.status == 404 and e.value.envelope()["error"]["param"] == "model"
    with pytest.raises(InsufficientCredit, match="max_tokens") as e:
        billing.hold(c.info, MODEL, 100, 101, "req-1")
    assert e.value.status == 429 and e.value.envelope()["error"]["code"] == "insufficient_quota"
    hold = billing.hold(c.info, MODEL, 100, 100, "req-2")  # exactly the balance: allowed
    assert billing.balance("acme") == 0
    billing.release(hold)
    with pytest.raises(BillingError, match="req-2"):
        billing.hold(c.info, MODEL, 0, 0, "req-2")  # one hold per request id
    assert_ledger_consistent(billing, "acme")


_CRASH = """
import os
from avocado_llm.billing import Billing
b = Billing({url!r}, {secret!r})
info = b.authenticate({key!r})
for i in range(3):
    b.hold(info, {model!r}, 100, 100, f"crash-{{i}}")
os._exit(9)  # a crash: no settle, no release, no clean shutdown
"""


def test_stale_holds_from_a_crash_are_released_at_startup(
    billing: Billing, database_url: str
) -> None:
    c = make_customer(billing, credits=1_000_000)
    code = textwrap.dedent(_CRASH.format(url=database_url, secret=SECRET, key=c.key, model=MODEL))
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert billing.account_info("acme")["held"] == 3 * charge_for(PRICE, 100, 100)
    assert billing.release_stale_holds(older_than_s=3600) == 0  # too recent to be stale
    assert billing.release_stale_holds() == 3
    assert billing.release_stale_holds() == 0
    assert billing.balance("acme") == 1_000_000
    with billing.engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(HoldRow.status == "open")) == 0
    assert_ledger_consistent(billing, "acme")


# --- leases: a hold belongs to the server process that placed it -----------------------------


def _expire_lease(billing: Billing, server_id: str) -> None:
    with billing.engine.begin() as conn:
        conn.execute(
            update(ServerRow)
            .where(ServerRow.id == server_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def _status(billing: Billing, request_id: str) -> str:
    with billing.engine.connect() as conn:
        return str(conn.scalar(select(HoldRow.status).where(HoldRow.request_id == request_id)))


def test_start_up_releases_the_holds_of_servers_gone_never_of_a_live_one(
    billing: Billing,
) -> None:
    c = make_customer(billing, credits=1_000_000)
    live = billing.register_server(lease_s=60)
    billing.hold(c.info, MODEL, 10, 10, "served", server_id=live)
    billing.hold(c.info, MODEL, 10, 10, "serverless")  # no server (as before leases): gone
    assert billing.release_stale_holds() == 1
    assert billing.release_stale_holds() == 0  # however often another server starts
    assert (_status(billing, "served"), _status(billing, "serverless")) == ("open", "released")
    _expire_lease(billing, live)  # the server stopped renewing: gone
    assert billing.release_stale_holds() == 1
    assert _status(billing, "served") == "released"
    assert not billing.renew_server(live, 60)  # it learns that its holds may be gone
    assert billing.balance("acme") == 1_000_000
    assert_ledger_consistent(billing, "acme")


_CRASH_LEASED = """
import os
from avocado_llm.billing import Billing
b = Billing({url!r}, {secret!r})
info = b.authenticate({key!r})
server = b.register_server(lease_s=3600)
for i in range(3):
    b.hold(info, {model!r}, 100, 100, f"crash-{{i}}", server_id=server)
b.claim_idempotency(info.key_id, "idem-crash", "hash", server)
os._exit(9)  # SIGKILL-like: the lease would last an hour, the process is gone now
"""


def test_the_holds_of_a_dead_process_on_this_machine_are_released_at_once(
    billing: Billing, database_url: str
) -> None:
    c = make_customer(billing, credits=1_000_000)
    code = _CRASH_LEASED.format(url=database_url, secret=SECRET, key=c.key, model=MODEL)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert billing.account_info("acme")["held"] == 3 * charge_for(PRICE, 100, 100)
    assert billing.release_stale_holds() == 3
    assert billing.balance("acme") == 1_000_000
    assert billing.claim_idempotency(c.info.key_id, "idem-crash", "hash") is None  # retry runs
    with billing.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ServerRow)) == 0
    assert_ledger_consistent(billing, "acme")


def test_running_claims_of_a_live_server_survive_another_start_up(billing: Billing) -> None:
    c = make_customer(billing, credits=1_000_000)
    live = billing.register_server(lease_s=60)
    assert billing.claim_idempotency(c.info.key_id, "idem-live", "hash", live) is None
    assert billing.claim_idempotency(c.info.key_id, "idem-none", "hash") is None
    billing.release_stale_holds()
    with pytest.raises(IdempotencyInProgress):  # still running on the live server
        billing.claim_idempotency(c.info.key_id, "idem-live", "hash", live)
    assert billing.claim_idempotency(c.info.key_id, "idem-none", "hash") is None  # dropped


def test_a_lease_found_gone_registers_again_and_disowns_its_old_holds(billing: Billing) -> None:
    c = make_customer(billing, credits=1_000_000)
    lease = billing.server_lease(lease_s=60)
    lease.start()
    try:
        first = lease.server_id
        billing.hold(c.info, MODEL, 10, 10, "req-1", server_id=first)
        lease.beat()
        assert lease.holds(first) and not lease.lost(first)
        _expire_lease(billing, first)  # it stalled past its lease: another server sweeps
        assert billing.release_stale_holds() == 1
        lease.beat()  # the renewal finds its row gone
        assert lease.lost(first) and not lease.holds(first)
        second = lease.server_id
        assert second != first and lease.holds(second)
        billing.hold(c.info, MODEL, 10, 10, "req-2", server_id=second)
        assert billing.release_stale_holds() == 0  # the new lease is alive
    finally:
        lease.close()
    assert billing.release_stale_holds() == 1  # a clean shutdown: what is left open is gone
    assert billing.balance("acme") == 1_000_000
    assert_ledger_consistent(billing, "acme")
