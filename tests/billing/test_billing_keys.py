"""API keys: only an HMAC is stored; revoked, expired and altered keys are refused."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from billing_helpers import SECRET, make_customer
from sqlalchemy import select
from sqlalchemy.engine import make_url

from avocado_llm.billing import Billing, BillingError, NotFound, Plan
from avocado_llm.billing.keys import key_hmac
from avocado_llm.billing.pgtemp import find_bindir
from avocado_llm.billing.schema import ApiKey


def _dump(database_url: str) -> bytes:
    """Every byte the database holds: the SQLite files, or a pg_dump of the database."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    command = [
        str(find_bindir() / "pg_dump"),
        "-h",
        "127.0.0.1",
        "-p",
        str(url.port),
        "-U",
        "postgres",
        "--data-only",
        str(url.database),
    ]
    return subprocess.run(command, capture_output=True, check=True).stdout


def test_key_shape_and_only_its_hmac_is_stored(billing: Billing, database_url: str) -> None:
    billing.create_account("acme")
    key_id, key = billing.create_key("acme", models=["m1", "m2"], rpm=60, tpm=1000)
    assert key.startswith("avk_") and len(key) >= 4 + 43  # 32 random bytes, url-safe
    assert key_id.startswith("key_") and key_id not in key
    with billing.engine.connect() as conn:
        row = conn.execute(select(ApiKey).where(ApiKey.id == key_id)).one()
    assert row.hmac == key_hmac(SECRET.encode(), key)
    assert key.startswith(row.prefix) and len(row.prefix) == 8
    dump = _dump(database_url)
    assert key_id.encode() in dump  # the dump is real …
    assert key.encode() not in dump and key[8:].encode() not in dump  # … and holds no key
    info = billing.authenticate(key)
    assert info is not None
    assert (info.key_id, info.account, info.models, info.rpm, info.tpm) == (
        key_id,
        "acme",
        ("m1", "m2"),
        60,
        1000,
    )
    assert info.plan == Plan()  # no logprobs by default


def test_altered_unknown_revoked_and_expired_keys_are_refused(billing: Billing) -> None:
    customer = make_customer(billing)
    key = customer.key
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (flipped, key[:-1], key + "x", "", "sk-" + key[4:], key.upper()):
        assert billing.authenticate(bad) is None
    other = Billing(billing.engine.url.render_as_string(hide_password=False), "another-secret")
    try:
        assert other.authenticate(key) is None  # a key is useless without the server's secret
    finally:
        other.close()

    assert billing.authenticate(key) is not None
    billing.revoke_key(customer.info.key_id)
    assert billing.authenticate(key) is None
    with pytest.raises(NotFound, match="key_nope"):
        billing.revoke_key("key_nope")

    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = billing.create_key("acme", expires_at=past)
    assert billing.authenticate(expired) is None
    _, later = billing.create_key("acme", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert billing.authenticate(later) is not None


def test_plan_and_last_used_are_recorded(billing: Billing) -> None:
    billing.create_account("acme")
    plan = Plan(name="research", max_tokens=4096, max_n=4, logprobs=True, max_top_logprobs=5)
    key_id, key = billing.create_key("acme", plan=plan)
    info = billing.authenticate(key)
    assert info is not None and info.plan == plan and info.models is None
    with billing.engine.connect() as conn:
        used = conn.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
    assert used is not None and used.tzinfo is not None
    assert abs((datetime.now(UTC) - used).total_seconds()) < 60


def test_keys_need_the_secret_and_an_account(billing: Billing, database_url: str) -> None:
    with pytest.raises(NotFound, match="nobody"):
        billing.create_key("nobody")
    billing.create_account("acme")
    no_secret = Billing(database_url, "")
    try:
        with pytest.raises(BillingError, match="AVOCADO_SECRET"):
            no_secret.create_key("acme")
        with pytest.raises(BillingError, match="AVOCADO_SECRET"):
            no_secret.authenticate("avk_whatever")
    finally:
        no_secret.close()
