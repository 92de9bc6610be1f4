"""Fixtures of the serve tests: one in-process engine over the zoo's qwen-tiny for the whole
session (loading it is the slow part), and per test a fresh SQLite ledger and a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serve_helpers import PRICE, SECRET, World, run_server

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.local_engine import LocalEngine

MODEL = "qwen-tiny"


@pytest.fixture(scope="session")
def engine(zoo_dir: Path) -> Iterator[LocalEngine]:
    """Started by the first app's lifespan; one torch thread is fastest on a shared CPU."""
    threads = torch.get_num_threads()
    engine = LocalEngine(zoo_dir / MODEL, model_name=MODEL, batch_wait_ms=5, threads=1)
    yield engine
    asyncio.run(engine.aclose())
    torch.set_num_threads(threads)


@pytest.fixture
def billing(tmp_path: Path) -> Iterator[Billing]:
    billing = Billing(f"sqlite:///{tmp_path / 'ledger.db'}", SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", 5 * MICRO)
    yield billing
    billing.close()


def settings(tmp_path: Path, zoo_dir: Path, **overrides: object) -> ServeSettings:
    return ServeSettings(
        model_dir=zoo_dir / MODEL,
        model_name=MODEL,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        secret=SECRET,
        **overrides,
    )


@pytest.fixture
def world(engine: LocalEngine, billing: Billing, tmp_path: Path, zoo_dir: Path) -> Iterator[World]:
    """A running server on loopback; ``world.key`` belongs to account ``acme`` ($5)."""
    config = settings(tmp_path, zoo_dir, max_body_bytes=64_000)
    app = create_app(config, engine=engine, billing=billing)
    key_id, key = billing.create_key("acme")
    with run_server(app) as base_url:
        world = World(base_url, billing, MODEL, key, key_id)
        yield world
        for client in world.clients:
            client.close()
