"""Ledger fixtures: every ledger test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL cluster is started once per test session (Debian's ``postgresql`` package,
on 127.0.0.1, in a temp dir) and stopped at the end; each test gets its own database, cloned
from a migrated template, and dropped afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from billing_helpers import SECRET

from avocado_llm.billing import Billing
from avocado_llm.billing.pgtemp import PostgresNotFound, TempPostgres

_TEMPLATE = "avocado_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A throwaway PostgreSQL cluster for the session (fails, never skips, without one)."""
    try:
        pg = TempPostgres().start()
    except PostgresNotFound as e:
        pytest.fail(f"the ledger tests need a PostgreSQL server: {e}", pytrace=False)
    try:
        billing = Billing(pg.create_database(_TEMPLATE), SECRET)
        billing.migrate()
        billing.close()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated ledger database: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        billing = Billing(url, SECRET)
        billing.migrate()
        billing.close()
        yield url
        return
    pg: TempPostgres = request.getfixturevalue("postgres")
    name = f"ledger_{next(_counter)}"
    yield pg.create_database(name, template=_TEMPLATE)
    pg.drop_database(name)


@pytest.fixture
def billing(database_url: str) -> Iterator[Billing]:
    """The ledger on ``database_url``, closed after the test."""
    ledger = Billing(database_url, SECRET)
    yield ledger
    ledger.close()
