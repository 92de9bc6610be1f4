"""Fixtures of the reliability tests: a throwaway PostgreSQL cluster for the session, a fake
upstream, and the zygote that starts ``avocado serve`` processes quickly."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from rel_helpers import FakeUpstream, Zygote

from avocado_llm.billing.pgtemp import PostgresNotFound, TempPostgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A PostgreSQL cluster on loopback for the session (fails, never skips, without one)."""
    try:
        pg = TempPostgres().start()
    except PostgresNotFound as e:
        pytest.fail(f"the reliability tests need a PostgreSQL server: {e}", pytrace=False)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_database(postgres: TempPostgres) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (the server migrates it); dropped afterwards."""
    name = f"reliability_{next(_counter)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        yield z
