"""Read-mostly ledger queries for the web console: usage per day and model, keys, open holds,
accounts. Every customer-facing query is scoped by ``account_id``; callers never pass an id
taken from a URL without it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select, update

from avocado_llm.billing.schema import Account, ApiKey, HoldRow, UsageEvent, utcnow


def _day(conn: Connection, column: Any) -> ColumnElement[str]:
    """``YYYY-MM-DD`` of a UTC timestamp column, on either database."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)  # SQLite stores naive UTC


def usage_by_day(
    conn: Connection, account_id: int, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Requests, tokens and charges per (UTC day, model) in ``[start, end)``, oldest first."""
    ue = UsageEvent.__table__.c
    day = _day(conn, ue.created_at).label("day")
    query = (
        select(
            day,
            ue.model,
            func.count().label("requests"),
            func.coalesce(func.sum(ue.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(ue.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(ue.charge), 0).label("charge"),
        )
        .where(ue.account_id == account_id, ue.created_at >= start, ue.created_at < end)
        .group_by(day, ue.model)
        .order_by(day, ue.model)
    )
    return [
        {
            "day": row.day,
            "model": row.model,
            "requests": int(row.requests),
            "prompt_tokens": int(row.prompt_tokens),
            "completion_tokens": int(row.completion_tokens),
            "charge": int(row.charge),
        }
        for row in conn.execute(query)
    ]


def list_keys(conn: Connection, account_id: int | None = None) -> list[dict[str, Any]]:
    """API keys (never their HMAC), newest first; only ``account_id``'s when given."""
    query = (
        select(
            ApiKey.id,
            ApiKey.prefix,
            Account.name.label("account"),
            ApiKey.account_id,
            ApiKey.models,
            ApiKey.rpm,
            ApiKey.tpm,
            ApiKey.plan,
            ApiKey.created_at,
            ApiKey.expires_at,
            ApiKey.revoked_at,
            ApiKey.last_used_at,
        )
        .join(Account, Account.id == ApiKey.account_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
    )
    if account_id is not None:
        query = query.where(ApiKey.account_id == account_id)
    now = utcnow()
    keys = []
    for row in conn.execute(query):
        key = dict(row._asdict())
        if key["revoked_at"] is not None:
            key["state"] = "revoked"
        elif key["expires_at"] is not None and key["expires_at"] <= now:
            key["state"] = "expired"
        else:
            key["state"] = "active"
        keys.append(key)
    return keys


def revoke_account_key(conn: Connection, account_id: int, key_id: str) -> bool:
    """Revoke ``key_id`` only if it belongs to ``account_id``; False when it does not exist
    *for this account* (another account's key is indistinguishable from a missing one)."""
    found = conn.scalar(
        select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.account_id == account_id)
    )
    if found is None:
        return False
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return True


def open_holds(conn: Connection) -> list[dict[str, Any]]:
    """Every open hold (a request being served, or left by a crash), oldest first."""
    query = (
        select(
            HoldRow.id,
            Account.name.label("account"),
            HoldRow.key_id,
            HoldRow.model,
            HoldRow.amount,
            HoldRow.request_id,
            HoldRow.created_at,
        )
        .join(Account, Account.id == HoldRow.account_id)
        .where(HoldRow.status == "open")
        .order_by(HoldRow.created_at, HoldRow.id)
    )
    return [dict(row._asdict()) for row in conn.execute(query)]


def accounts(conn: Connection) -> list[dict[str, Any]]:
    """Every account with its balance, held credit and number of active keys, by name."""
    active_keys = (
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.account_id == Account.id, ApiKey.revoked_at.is_(None))
        .scalar_subquery()
    )
    query = select(
        Account.id,
        Account.name,
        Account.balance,
        Account.held,
        Account.created_at,
        active_keys.label("active_keys"),
    ).order_by(Account.name)
    return [dict(row._asdict()) for row in conn.execute(query)]


def account_name(conn: Connection, account_id: int) -> str | None:
    return conn.scalar(select(Account.name).where(Account.id == account_id))
