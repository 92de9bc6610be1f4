"""Ledger fixtures: every ledger test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL cluster is ``tests/conftest.py``'s ``postgres`` (one per test session, shared by
every suite); each test gets its own database, cloned from the migrated template there, and
dropped afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from billing_helpers import SECRET

from avocado_llm.billing import Billing
from avocado_llm.testing.pgtemp import TempPostgres

_counter = itertools.count()


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
    template: str = request.getfixturevalue("ledger_template")
    name = f"ledger_{next(_counter)}"
    yield pg.create_database(name, template=template)
    pg.drop_database(name)


@pytest.fixture
def billing(database_url: str) -> Iterator[Billing]:
    """The ledger on ``database_url``, closed after the test."""
    ledger = Billing(database_url, SECRET)
    yield ledger
    ledger.close()
