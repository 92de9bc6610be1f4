"""The schema: Alembic builds exactly what the models declare, and it guards the money."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from billing_helpers import SECRET
from sqlalchemy import inspect, update
from sqlalchemy.exc import IntegrityError

from avocado_llm.billing import Billing
from avocado_llm.billing.database import alembic_config
from avocado_llm.billing.schema import Account, Base
from avocado_llm.testing import pgtemp


def test_migrated_schema_matches_the_models(billing: Billing) -> None:
    with billing.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0004"
        checks = inspect(conn).get_check_constraints("accounts")
    assert {c["name"] for c in checks} >= {"ck_accounts_balance_nonnegative"}


def test_downgrade_and_upgrade_again(database_url: str) -> None:
    billing = Billing(database_url, SECRET)
    try:
        billing.create_account("acme", 5)
        with billing.engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        billing.migrate()
        billing.migrate()  # idempotent
        billing.create_account("acme", 5)
        assert billing.balance("acme") == 5
    finally:
        billing.close()


def test_the_database_itself_refuses_a_negative_balance(billing: Billing) -> None:
    billing.create_account("acme", 5)
    with pytest.raises(IntegrityError), billing.engine.begin() as conn:
        conn.execute(update(Account).values(balance=Account.balance - 6))
    assert billing.balance("acme") == 5


def test_missing_postgres_binaries_give_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgtemp.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgtemp.shutil, "which", lambda name: None)
    with pytest.raises(pgtemp.PostgresNotFound, match="apt-get install -y postgresql"):
        pgtemp.find_bindir()
