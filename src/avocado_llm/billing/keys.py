"""API keys: random, shown once, stored only as an HMAC-SHA256 under the server's secret.

A key reads ``avk_<43 url-safe characters>`` (32 random bytes). The database keeps its HMAC
(to find it), a short prefix (to recognise it in a list) and a public ``key_…`` id (to name it
in logs and admin commands); a stolen database therefore yields no usable key, and a key
cannot be checked without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, insert, select, update

from avocado_llm.billing.errors import NotFound
from avocado_llm.billing.records import KeyInfo, Plan
from avocado_llm.billing.schema import Account, ApiKey, utcnow

KEY_PREFIX = "avk_"
KEY_BYTES = 32
SHOWN_PREFIX = 8  # characters kept in clear: "avk_" and 4 random ones (24 bits, harmless)
_MAX_KEY_LENGTH = 200  # anything longer is not ours; refuse before hashing

_K = ApiKey.__table__.c
_LOOKUP = (  # built once: this runs for every request
    select(
        _K.id,
        _K.account_id,
        Account.__table__.c.name,
        _K.hmac,
        _K.models,
        _K.rpm,
        _K.tpm,
        _K.plan,
        _K.expires_at,
        _K.revoked_at,
    )
    .join_from(ApiKey.__table__, Account.__table__, Account.__table__.c.id == _K.account_id)
    .where(_K.hmac == bindparam("digest"))
)


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)`` pair."""
    return "key_" + secrets.token_urlsafe(9), KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hmac(secret: bytes, key: str) -> str:
    """Hex HMAC-SHA256 of ``key`` under ``secret``: what the database stores and looks up."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def insert_key(
    conn: Connection,
    secret: bytes,
    account: str,
    *,
    models: list[str] | None,
    rpm: int | None,
    tpm: int | None,
    expires_at: datetime | None,
    plan: Plan | None,
    origin: str = "operator",
) -> tuple[str, str]:
    """Create a key for ``account``; returns ``(key_id, key)`` — the key is never stored.
    ``origin`` says who made it: ``"operator"`` or ``"console"`` (see ``key_limits``)."""
    account_id = conn.scalar(select(Account.id).where(Account.name == account))
    if account_id is None:
        raise NotFound(
            f"no account named {account!r}; create it with `avocado admin accounts create`"
        )
    for name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be a positive integer or None (unlimited), got {value}")
    key_id, key = new_key()
    conn.execute(
        insert(ApiKey).values(
            id=key_id,
            account_id=account_id,
            hmac=key_hmac(secret, key),
            prefix=key[:SHOWN_PREFIX],
            models=list(models) if models is not None else None,
            rpm=rpm,
            tpm=tpm,
            plan=(plan or Plan()).to_json(),
            expires_at=expires_at,
            origin=origin,
        )
    )
    return key_id, key


def revoke(conn: Connection, key_id: str) -> None:
    """Revoke a key from now on (revoking twice keeps the first time)."""
    found = conn.scalar(select(ApiKey.id).where(ApiKey.id == key_id))
    if found is None:
        raise NotFound(f"no API key with id {key_id!r} (ids look like key_…)")
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def lookup(conn: Connection, secret: bytes, api_key: str) -> KeyInfo | None:
    """The key's :class:`KeyInfo`, or None when it is unknown, revoked or expired.

    The lookup is by HMAC, so a timing difference could only reveal bits of an HMAC, never of
    a key; the stored digest is still compared in constant time.
    """
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > _MAX_KEY_LENGTH:
        return None
    digest = key_hmac(secret, api_key)
    row = conn.execute(_LOOKUP, {"digest": digest}).first()
    if row is None or not hmac.compare_digest(row.hmac, digest) or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return KeyInfo(
        key_id=row.id,
        account_id=row.account_id,
        account=row.name,
        models=tuple(row.models) if row.models is not None else None,
        rpm=row.rpm,
        tpm=row.tpm,
        plan=Plan.from_json(row.plan),
    )


def touch(conn: Connection, key_id: str, min_interval_s: float) -> None:
    """Record that the key was used, at most once per ``min_interval_s`` (keeps writes rare)."""
    now = utcnow()
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(
            ApiKey.last_used_at.is_(None)
            | (ApiKey.last_used_at < now - timedelta(seconds=min_interval_s))
        )
        .values(last_used_at=now)
    )
