"""Stored answers for ``Idempotency-Key`` retries (Stripe's semantics).

A row per (API key, Idempotency-Key) holds the hash of the request body and the answer. A
retry with the same body gets the stored answer and is not charged again; another body gets
:class:`IdempotencyConflict`. ``claim`` additionally marks a key as *in progress* (a row
whose response is NULL) before the request runs, so that a retry arriving while the first
attempt still runs is refused (409) instead of being answered — and charged — twice.
Rows are kept at least ``KEEP_S`` (24 h); ``purge`` removes older ones.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, delete, select

from avocado_llm.billing.database import insert_or
from avocado_llm.billing.errors import IdempotencyConflict, IdempotencyInProgress
from avocado_llm.billing.schema import IdempotencyRecord, utcnow

KEEP_S = 24 * 3600


def stored(conn: Connection, key_id: str, idem_key: str, body_hash: str) -> bytes | None:
    """The stored answer, None if there is none; raises on another body or a running first try."""
    row = conn.execute(
        select(IdempotencyRecord.body_hash, IdempotencyRecord.response).where(
            IdempotencyRecord.key_id == key_id, IdempotencyRecord.idem_key == idem_key
        )
    ).first()
    if row is None:
        return None
    if row.body_hash != body_hash:
        raise IdempotencyConflict(
            f"Idempotency-Key {idem_key!r} was already used with a different request body; "
            "use a new key for a new request",
            param="Idempotency-Key",
        )
    if row.response is None:
        raise IdempotencyInProgress(
            f"the first request with Idempotency-Key {idem_key!r} is still running; retry later",
            param="Idempotency-Key",
        )
    return bytes(row.response)


def claim(conn: Connection, key_id: str, idem_key: str, body_hash: str) -> bytes | None:
    """Mark the key as in progress and return None, or answer as :func:`stored` does."""
    inserted = conn.execute(
        insert_or(conn, IdempotencyRecord)
        .values(key_id=key_id, idem_key=idem_key, body_hash=body_hash, response=None)
        .on_conflict_do_nothing(index_elements=["key_id", "idem_key"])
        .returning(IdempotencyRecord.key_id)  # a row back means this call inserted it
    ).first()
    return None if inserted is not None else stored(conn, key_id, idem_key, body_hash)


def save(conn: Connection, key_id: str, idem_key: str, body_hash: str, response: bytes) -> None:
    """Store the answer; fills an in-progress claim, never overwrites a stored answer."""
    table = IdempotencyRecord.__table__
    conn.execute(
        insert_or(conn, IdempotencyRecord)
        .values(key_id=key_id, idem_key=idem_key, body_hash=body_hash, response=response)
        .on_conflict_do_update(
            index_elements=["key_id", "idem_key"],
            set_={"response": response},
            where=table.c.response.is_(None) & (table.c.body_hash == body_hash),
        )
    )


def abandon(conn: Connection, key_id: str, idem_key: str) -> None:
    """Drop an in-progress claim whose request failed, so a retry can run."""
    conn.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.key_id == key_id,
            IdempotencyRecord.idem_key == idem_key,
            IdempotencyRecord.response.is_(None),
        )
    )


def purge(conn: Connection, older_than_s: float = KEEP_S, *, unfinished_only: bool = False) -> int:
    """Delete rows older than ``older_than_s`` (only in-progress claims if ``unfinished_only``)."""
    query = delete(IdempotencyRecord).where(
        IdempotencyRecord.created_at <= utcnow() - timedelta(seconds=older_than_s)
    )
    if unfinished_only:
        query = query.where(IdempotencyRecord.response.is_(None))
    return conn.execute(query).rowcount
