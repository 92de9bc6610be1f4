"""Helpers shared by the ledger tests: a priced, funded account and ledger invariants."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from sqlalchemy import func, select

from avocado_llm.billing import Billing, InsufficientCredit, KeyInfo, Price
from avocado_llm.billing.schema import Account, HoldRow, LedgerEntry, UsageEvent

SECRET = "test-server-secret"
MODEL = "avocado-1"
PRICE = Price(input_per_1m=500_000, output_per_1m=1_500_000, per_request=7)  # $0.5 / $1.5 / 1M


@dataclass
class Customer:
    account: str
    key: str
    info: KeyInfo


def make_customer(billing: Billing, account: str = "acme", credits: int = 10_000_000) -> Customer:
    """An account with ``credits`` micro-USD, a key for it, and ``MODEL`` priced at ``PRICE``."""
    billing.create_account(account, credits)
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    _, key = billing.create_key(account)
    info = billing.authenticate(key)
    assert info is not None
    return Customer(account, key, info)


def assert_ledger_consistent(billing: Billing, account: str) -> None:
    """The account's columns equal its ledger; every settled hold has exactly one usage event."""
    engine = billing.engine
    with engine.connect() as conn:
        acc = conn.execute(select(Account).where(Account.name == account)).one()

        def total(*kinds: str) -> int:
            query = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.account_id == acc.id, LedgerEntry.kind.in_(kinds)
            )
            return int(conn.scalar(query))

        assert total("credit", "charge", "hold", "release") == acc.balance
        assert -total("hold", "release") == acc.held
        assert total("credit") + total("charge") == acc.balance + acc.held
        charges = conn.scalar(
            select(func.coalesce(func.sum(UsageEvent.charge), 0)).where(
                UsageEvent.account_id == acc.id
            )
        )
        assert -total("charge") == charges
        settled = conn.scalar(
            select(func.count()).where(HoldRow.account_id == acc.id, HoldRow.status == "settled")
        )
        events = conn.scalar(select(func.count()).where(UsageEvent.account_id == acc.id))
        assert settled == events
        open_amount = conn.scalar(
            select(func.coalesce(func.sum(HoldRow.amount), 0)).where(
                HoldRow.account_id == acc.id, HoldRow.status == "open"
            )
        )
        assert open_amount == acc.held
        assert acc.balance >= 0 and acc.held >= 0


def place_holds(billing: Billing, info: KeyInfo, n: int, prefix: str) -> list[dict | str]:
    """``n`` threads released at once, each placing one (100 prompt + 200 max tokens) hold:
    per thread the hold's fields, ``"refused"`` (insufficient credit) or ``"error: …"``."""
    results: list[dict | str] = ["not run"] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = asdict(billing.hold(info, MODEL, 100, 200, f"{prefix}-{i}"))
        except InsufficientCredit:
            results[i] = "refused"
        except Exception as e:  # reported, and the test fails on it
            results[i] = f"error: {e!r}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
