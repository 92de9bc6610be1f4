"""Monthly statements: opening + credits − charges = closing, equal to the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from billing_helpers import MODEL, PRICE, assert_ledger_consistent, make_customer
from sqlalchemy import update

from avocado_llm.billing import Billing, NotFound, charge_for
from avocado_llm.billing.schema import LedgerEntry
from avocado_llm.billing.statements import month_bounds


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def test_statements_reconcile_across_months(billing: Billing) -> None:
    c = make_customer(billing, credits=10_000_000)
    charges_before = [
        billing.settle(billing.hold(c.info, MODEL, 100, 200, f"old-{i}"), 100, 10 * i)
        for i in range(3)
    ]
    # Move that history into last month, as if it had happened then.
    now = datetime.now(UTC)
    last_start, _ = month_bounds(_month(now.replace(day=1) - timedelta(days=1)))
    with billing.engine.begin() as conn:
        conn.execute(update(LedgerEntry).values(created_at=last_start.replace(day=15)))

    billing.add_credits("acme", 2_500_000, "top-up")
    charges_now = [
        billing.settle(billing.hold(c.info, MODEL, 50, 100, f"new-{i}"), 50, 7 * i)
        for i in range(4)
    ]
    open_hold = billing.hold(c.info, MODEL, 10, 10, "running")

    last = billing.statement("acme", _month(last_start))
    assert (last["opening"], last["credits"], last["charges"]) == (
        0,
        10_000_000,
        sum(charges_before),
    )
    assert last["closing"] == 10_000_000 - sum(charges_before)
    assert last["requests"] == 3 and last["held_at_close"] == 0

    this = billing.statement("acme", _month(now))
    assert this["opening"] == last["closing"]
    assert (this["credits"], this["charges"]) == (2_500_000, sum(charges_now))
    assert this["opening"] + this["credits"] - this["charges"] == this["closing"]
    info = billing.account_info("acme")
    assert this["closing"] == info["balance"] + info["held"]  # the ledger and the account agree
    assert this["held_at_close"] == open_hold.amount == info["held"]
    [line] = this["by_model"]
    assert (line["model"], line["requests"], line["charges"]) == (MODEL, 4, sum(charges_now))
    assert line["completion_tokens"] == sum(7 * i for i in range(4))
    assert this["entries"][-1]["balance"] == this["closing"]
    assert [e["kind"] for e in this["entries"]] == ["credit"] + ["charge"] * 4
    assert all(isinstance(this[k], int) for k in ("opening", "credits", "charges", "closing"))

    quiet = billing.statement("acme", "2999-01")
    assert quiet["opening"] == quiet["closing"] == this["closing"] and quiet["entries"] == []
    assert charges_now[1] == charge_for(PRICE, 50, 7)
    assert_ledger_consistent(billing, "acme")


def test_month_bounds_and_bad_input(billing: Billing) -> None:
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    billing.create_account("acme")
    for bad in ("2026-13", "2026-1", "march"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            billing.statement("acme", bad)
    with pytest.raises(NotFound, match="nobody"):
        billing.statement("nobody", "2026-01")
