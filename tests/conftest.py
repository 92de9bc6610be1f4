from collections.abc import Iterator
from pathlib import Path

import pytest

from avocado_llm.billing import Billing
from avocado_llm.testing.pgtemp import PostgresNotFound, TempPostgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The shipped teacher zoo (rebuilt by `avocado zoo build`)."""
    path = ROOT / "zoo"
    assert (path / "qwen-tiny" / "config.json").exists(), "the zoo is missing: run `make zoo`"
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A throwaway PostgreSQL cluster on loopback for the session, shared by every suite (fails,
    never skips, without one)."""
    try:
        pg = TempPostgres().start()
    except PostgresNotFound as e:
        pytest.fail(f"the ledger tests need a PostgreSQL server: {e}", pytrace=False)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def ledger_template(postgres: TempPostgres) -> str:
    """The name of a migrated, empty ledger database on ``postgres``: tests clone it
    (``postgres.create_database(name, template=ledger_template)``)."""
    name = "avocado_template"
    billing = Billing(postgres.create_database(name), "template-secret")
    billing.migrate()  # the schema only: nothing in it depends on the secret
    billing.close()
    return name
