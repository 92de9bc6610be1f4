"""Fixtures of the serve tests: one in-process engine over the zoo's qwen-tiny for the whole
session (loading it is the slow part), and per test a fresh ledger and a real server.

The ledger is a SQLite file unless a test asks for PostgreSQL too, with
``@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)``:
then ``tests/conftest.py``'s ``postgres`` cluster is started once for the session and each
test gets its own database, cloned from the migrated template there and dropped afterwards.
``redis_server`` is a throwaway redis-server for the session (shared rate limits).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serve_helpers import PRICE, SECRET, World, run_server

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.testing.pgtemp import TempPostgres
from avocado_llm.testing.redistemp import RedisNotFound, TempRedis

MODEL = "qwen-tiny"
_databases = itertools.count()


@pytest.fixture(scope="session")
def engine(zoo_dir: Path) -> Iterator[LocalEngine]:
    """Started by the first app's lifespan; one torch thread is fastest on a shared CPU."""
    threads = torch.get_num_threads()
    engine = LocalEngine(zoo_dir / MODEL, model_name=MODEL, batch_wait_ms=5, threads=1)
    yield engine
    asyncio.run(engine.aclose())
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[TempRedis]:
    """A throwaway redis-server for the session (fails, never skips, without one)."""
    try:
        server = TempRedis().start()
    except RedisNotFound as e:
        pytest.fail(f"the shared rate-limit tests need a Redis server: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The ledger's URL: a SQLite file [default], or a fresh database on ``postgres``."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    pg: TempPostgres = request.getfixturevalue("postgres")
    template: str = request.getfixturevalue("ledger_template")
    name = f"serve_{next(_databases)}"
    yield pg.create_database(name, template=template)
    pg.drop_database(name)


@pytest.fixture
def billing(database_url: str) -> Iterator[Billing]:
    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", 5 * MICRO)
    yield billing
    billing.close()


def settings(tmp_path: Path, zoo_dir: Path, **overrides: object) -> ServeSettings:
    values: dict[str, object] = {"database_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    values.update(overrides)
    return ServeSettings(model_dir=zoo_dir / MODEL, model_name=MODEL, secret=SECRET, **values)


@pytest.fixture
def world(
    engine: LocalEngine, billing: Billing, database_url: str, tmp_path: Path, zoo_dir: Path
) -> Iterator[World]:
    """A running server on loopback; ``world.key`` belongs to account ``acme`` ($5)."""
    config = settings(tmp_path, zoo_dir, database_url=database_url, max_body_bytes=64_000)
    app = create_app(config, engine=engine, billing=billing)
    key_id, key = billing.create_key("acme")
    with run_server(app) as base_url:
        world = World(base_url, billing, MODEL, key, key_id)
        yield world
        for client in world.clients:
            client.close()
