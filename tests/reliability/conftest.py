"""Fixtures of the reliability tests: databases on ``tests/conftest.py``'s PostgreSQL, a fake
upstream, and the zygote that starts ``avocado serve`` processes quickly."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from rel_helpers import (
    SECRET,
    FakeUpstream,
    Gateway,
    ServerProcess,
    Zygote,
    free_port,
    prepare_ledger,
    running,
)

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.testing.pgtemp import TempPostgres

GATEWAY_ENV = {"AVOCADO_MAX_BODY_BYTES": "65536", "AVOCADO_MAX_PROMPT_TOKENS": "256"}
"""The gateway's caps: 64 KiB bodies, prompts of at most 255 tokens."""

_counter = itertools.count()


@pytest.fixture
def pg_database(postgres: TempPostgres) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (the server migrates it); dropped afterwards."""
    name = f"reliability_{next(_counter)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        yield z


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    url = f"sqlite:///{root / 'ledger.db'}"
    prepare_ledger(url, 0)  # migrates and prices the model; "acme" gets its key below
    billing = Billing(url, SECRET)
    try:
        billing.add_credits("acme", 100 * MICRO, "test credit")
        billing.create_account("globex", 10 * MICRO)
        plan = Plan(name="fuzz", max_tokens=64, max_n=4, logprobs=True, max_top_logprobs=5)
        key = billing.create_key("acme", plan=plan)[1]
        other = billing.create_key("globex")[1]
        revoked_id, revoked = billing.create_key("acme")
        billing.revoke_key(revoked_id)
        expired = billing.create_key("acme", expires_at=datetime.now(UTC) - timedelta(hours=1))[1]
        restricted = billing.create_key("acme", models=["another-model"])[1]
    finally:
        billing.close()
    server = ServerProcess(
        None, free_port(), upstream.url, url, root / "server.log", extra_env=GATEWAY_ENV
    )
    with running([server]):
        gw = Gateway(server.url, url, server.log, key, other, revoked, expired, restricted)
        gw.used += [key, other, revoked, expired, restricted]
        yield gw
        server.stop()
