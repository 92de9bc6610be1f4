"""The ledger's console side on SQLite and on a real PostgreSQL server: console users and
sessions, usage per UTC day and model, keys scoped to an account, open holds, accounts, and
migration 0002 down and up again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, update

from avocado_llm.billing import MICRO, Billing, BillingError, KeyInfo, NotFound, Plan
from avocado_llm.billing.console_users import hash_password, verify_password
from avocado_llm.billing.database import alembic_config
from avocado_llm.billing.schema import ConsoleSession, LedgerEntry, UsageEvent
from avocado_llm.testing.pgtemp import TempPostgres

SECRET = "console-ledger-secret"


@pytest.fixture(params=["sqlite", "postgresql"])
def billing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Billing]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        pg: TempPostgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"console_{tmp_path.name[-20:].replace('-', '_').lower()}")
    ledger = Billing(url, SECRET)
    ledger.migrate()
    ledger.set_price("m1", 1_000_000, 2_000_000, 0)
    ledger.set_price("m2", 3_000_000, 4_000_000, 5)
    ledger.create_account("acme", 10 * MICRO)
    ledger.create_account("globex", 10 * MICRO)
    yield ledger
    ledger.close()


def _spend(billing: Billing, account: str, model: str, request_id: str, when: datetime) -> int:
    key_id = billing.create_key(account)[0]
    info = billing.account_info(account)
    key = KeyInfo(key_id, info["id"], account, None, None, None, Plan())
    hold = billing.hold(key, model, 10, 20, request_id)
    charge = billing.settle(hold, 10, 5)
    with billing.engine.begin() as conn:
        conn.execute(
            update(UsageEvent).where(UsageEvent.request_id == request_id).values(created_at=when)
        )
        conn.execute(
            update(LedgerEntry).where(LedgerEntry.hold_id == hold.id).values(created_at=when)
        )
    return charge


def test_usage_by_utc_day_and_model(billing: Billing) -> None:
    day = datetime(2026, 3, 10, tzinfo=UTC)
    c1 = _spend(billing, "acme", "m1", "r1", day + timedelta(hours=0, minutes=0, seconds=1))
    c2 = _spend(billing, "acme", "m1", "r2", day + timedelta(hours=23, minutes=59, seconds=59))
    c3 = _spend(billing, "acme", "m2", "r3", day + timedelta(hours=12))
    c4 = _spend(billing, "acme", "m1", "r4", day + timedelta(days=1, seconds=1))  # next day
    _spend(billing, "globex", "m1", "r5", day + timedelta(hours=1))  # another account
    acme = billing.account_info("acme")["id"]
    rows = billing.usage_by_day(acme, day, day + timedelta(days=2))
    assert [(r["day"], r["model"], r["requests"], r["charge"]) for r in rows] == [
        ("2026-03-10", "m1", 2, c1 + c2),
        ("2026-03-10", "m2", 1, c3),
        ("2026-03-11", "m1", 1, c4),
    ]
    assert rows[0]["prompt_tokens"] == 20 and rows[0]["completion_tokens"] == 10
    only_first = billing.usage_by_day(acme, day, day + timedelta(days=1))
    assert {r["day"] for r in only_first} == {"2026-03-10"}


def test_console_users_and_sessions(billing: Billing) -> None:
    billing.create_console_user("alice", "alice-password-1", account="acme")
    billing.create_console_user("root", "root-password-12", operator=True)
    with pytest.raises(BillingError, match="already exists"):
        billing.create_console_user("alice", "another-password", account="acme")
    with pytest.raises(NotFound):
        billing.create_console_user("bob", "bob-password-123", account="nope")
    with pytest.raises(ValueError, match="at least"):
        billing.create_console_user("carol", "short", account="acme")
    with pytest.raises(ValueError, match="needs an account"):
        billing.create_console_user("dave", "dave-password-12")

    assert billing.console_sign_in("alice", "wrong-password") is None
    assert billing.console_sign_in("nobody", "alice-password-1") is None
    signed = billing.console_sign_in("alice", "alice-password-1")
    assert signed is not None
    user, token, csrf = signed
    assert (user.username, user.account, user.is_operator) == ("alice", "acme", False)
    assert billing.console_session(token) == (user, csrf)
    assert billing.console_session(token + "x") is None
    # only the token's hash is stored
    with billing.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(ConsoleSession.__table__.select())]
    assert token not in ids and len(ids[0]) == 64
    # expired sessions are refused
    with billing.engine.begin() as conn:
        conn.execute(update(ConsoleSession).values(expires_at=datetime.now(UTC) - timedelta(1)))
    assert billing.console_session(token) is None

    ops = billing.console_sign_in("root", "root-password-12")
    assert ops is not None and ops[0].is_operator and ops[0].account is None
    billing.console_sign_out(ops[1])
    assert billing.console_session(ops[1]) is None
    again = billing.console_sign_in("root", "root-password-12")
    assert again is not None
    billing.disable_console_user("root")
    assert billing.console_session(again[1]) is None
    assert billing.console_sign_in("root", "root-password-12") is None
    users = {u["username"]: u for u in billing.console_users()}
    assert users["root"]["disabled_at"] is not None and users["alice"]["account"] == "acme"


def test_password_hashes() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert hash_password("correct horse battery") != stored  # salted
    assert not verify_password("x", "not-a-hash")


def test_keys_holds_and_accounts(billing: Billing) -> None:
    acme, globex = billing.account_info("acme")["id"], billing.account_info("globex")["id"]
    mine, _ = billing.create_key("acme", models=["m1"], rpm=60)
    theirs, _ = billing.create_key("globex")
    keys = billing.api_keys(acme)
    assert [k["id"] for k in keys] == [mine] and keys[0]["state"] == "active"
    assert keys[0]["models"] == ["m1"] and keys[0]["rpm"] == 60 and "hmac" not in keys[0]
    assert {k["id"] for k in billing.api_keys()} == {mine, theirs}
    assert billing.revoke_account_key(acme, theirs) is False  # another account's key
    assert billing.api_keys(globex)[0]["state"] == "active"
    assert billing.revoke_account_key(acme, mine) is True
    assert billing.api_keys(acme)[0]["state"] == "revoked"

    key = KeyInfo(theirs, globex, "globex", None, None, None, Plan())
    hold = billing.hold(key, "m2", 10, 100, "open-1")
    holds = billing.open_holds()
    assert [(h["request_id"], h["account"], h["amount"]) for h in holds] == [
        ("open-1", "globex", hold.amount)
    ]
    accounts = {a["name"]: a for a in billing.accounts()}
    assert accounts["globex"]["held"] == hold.amount and accounts["acme"]["active_keys"] == 0
    assert accounts["globex"]["active_keys"] == 1
    billing.release(hold)
    assert billing.open_holds() == []


def test_migration_0002_down_and_up(billing: Billing) -> None:
    billing.create_console_user("alice", "alice-password-1", account="acme")
    with billing.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
        tables = set(inspect(conn).get_table_names())
    assert "console_users" not in tables and "console_sessions" not in tables
    assert {"accounts", "api_keys", "ledger_entries"} <= tables
    assert billing.balance("acme") == 10 * MICRO  # the ledger is untouched
    billing.migrate()
    billing.create_console_user("alice", "alice-password-1", account="acme")
    assert billing.console_sign_in("alice", "alice-password-1") is not None
