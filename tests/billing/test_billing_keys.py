"""API keys: only an HMAC is stored; revoked, expired and altered keys are refused."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from billing_helpers import SECRET, make_customer
from sqlalchemy import select
from sqlalchemy.engine import make_url

from avocado_llm.billing import Billing, BillingError, NotFound, Plan, key_limits
from avocado_llm.billing.key_limits import KeyLimits, KeyRequest
from avocado_llm.billing.keys import key_hmac
from avocado_llm.billing.schema import ApiKey
from avocado_llm.testing.pgtemp import find_bindir


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


# --- the ceiling of keys made in the console (issue #18.3) ----------------------------------


def _stored(billing: Billing, key_id: str) -> Any:
    with billing.engine.connect() as conn:
        row = conn.execute(
            select(ApiKey.origin, ApiKey.expires_at).where(ApiKey.id == key_id)
        ).first()
    assert row is not None
    return row


def test_a_console_key_gets_the_tightest_of_the_operators_keys(billing: Billing) -> None:
    billing.create_account("acme", 5)
    with pytest.raises(ValueError, match="has not set"):  # no limits, no key: nothing
        billing.create_console_key("acme", KeyRequest())
    tight = Plan(max_tokens=16, max_n=2, logprobs=True, max_top_logprobs=3, watermark=2.0)
    loose = Plan(max_tokens=512, max_n=4, logprobs=True, max_top_logprobs=5, watermark=4.0)
    billing.create_key("acme", models=["m1", "m2"], rpm=3, tpm=900, plan=tight)
    revoked, _ = billing.create_key("acme", models=["m2", "m3"], rpm=60, plan=loose)
    billing.revoke_key(revoked)  # still binds: a customer may revoke keys from the console
    limits, source = billing.account_key_limits("acme")
    assert source == key_limits.DERIVED and limits is not None
    assert limits.models == ("m2",) and (limits.rpm, limits.tpm) == (3, 900)
    assert limits.plan.max_tokens == 16 and limits.plan.max_n == 2
    assert limits.plan.max_top_logprobs == 3 and limits.plan.watermark == 4.0

    key_id, key = billing.create_console_key("acme", KeyRequest())  # a blank form
    info = billing.authenticate(key)
    assert info is not None and info.models == ("m2",) and (info.rpm, info.tpm) == (3, 900)
    assert info.plan.max_tokens == 16 and info.plan.watermark == 4.0
    assert _stored(billing, key_id).origin == "console"
    # console keys never loosen the ceiling (they are not the operator's)
    assert billing.account_key_limits("acme") == (limits, key_limits.DERIVED)

    for asked, says in [
        (KeyRequest(rpm=4), "at most 3"),
        (KeyRequest(tpm=901), "at most 900"),
        (KeyRequest(max_tokens=17), "at most 16"),
        (KeyRequest(models=("m1",)), "may call only m2, not m1"),
    ]:
        with pytest.raises(ValueError, match=says):
            billing.create_console_key("acme", asked)
    _, smaller = billing.create_console_key("acme", KeyRequest(rpm=1, max_tokens=8))
    info = billing.authenticate(smaller)
    assert info is not None and info.rpm == 1 and info.plan.max_tokens == 8 and info.tpm == 900


def test_the_operators_limits_and_expiry(billing: Billing) -> None:
    billing.create_account("acme", 5)
    billing.create_key("acme", rpm=1)  # explicit limits replace the meet of the keys
    soon = datetime.now(UTC) + timedelta(days=2)
    billing.set_account_key_limits("acme", KeyLimits(rpm=30, expires_by=soon))
    limits, source = billing.account_key_limits("acme")
    assert source == key_limits.EXPLICIT and limits is not None and limits.rpm == 30
    key_id, _ = billing.create_console_key("acme", KeyRequest())
    assert _stored(billing, key_id).expires_at == soon  # blank: the account's latest expiry
    later = KeyRequest(expires_at=soon + timedelta(days=1))
    with pytest.raises(ValueError, match="must expire by"):
        billing.create_console_key("acme", later)
    billing.set_account_key_limits("acme", KeyLimits(expires_by=soon - timedelta(days=3)))
    with pytest.raises(ValueError, match="had to expire by"):
        billing.create_console_key("acme", KeyRequest())
    billing.set_account_key_limits("acme", None)  # back to the meet of the operator's keys
    assert billing.account_key_limits("acme")[0] == KeyLimits(rpm=1)


def test_meet_is_within_both() -> None:
    a = KeyLimits(models=("x", "y"), rpm=5, plan=Plan(max_tokens=100, logprobs=True,
                                                      max_top_logprobs=4))  # fmt: skip
    b = KeyLimits(tpm=7, plan=Plan(max_tokens=50, max_n=3, watermark=0.0))
    both = key_limits.meet(a, b)
    assert both.models == ("x", "y") and (both.rpm, both.tpm) == (5, 7)
    assert both.plan.max_tokens == 50 and both.plan.max_n == 1
    assert not both.plan.logprobs and both.plan.max_top_logprobs == 0
    assert both.plan.watermark == Plan().watermark  # the stronger watermark
    assert key_limits.meet(b, a) == replace(both, plan=replace(both.plan, name=b.plan.name))
    assert KeyLimits.from_json(both.to_json()) == both
    with pytest.raises(ValueError, match="rpm must be a positive"):
        KeyLimits(rpm=0)
