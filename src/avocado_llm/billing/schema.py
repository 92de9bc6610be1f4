"""The ledger's tables (SQLAlchemy 2 declarative). Alembic's migrations create them.

Invariants the schema itself enforces: an account's ``balance`` (available credit) and
``held`` (credit set aside by open holds) are never negative (CHECK); one hold and at most one
usage event per ``request_id`` (UNIQUE); an idempotency key is stored once per API key.
For every account, the ledger entries add up to the columns:
``Σ amount = balance``, ``Σ amount of hold/release entries = -held`` and
``Σ amount of credit/charge entries = balance + held``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
HOLD_STATUSES = ("open", "settled", "released")
LEDGER_KINDS = ("credit", "charge", "hold", "release")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite (which has no time zones) stores naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_nonnegative"),
        CheckConstraint("held >= 0", name="held_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)  # available micro-USD
    held: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-USD in open holds
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The most a key made in the console may have (``billing.key_limits.KeyLimits``), set by
    # the operator; NULL: the tightest of the operator's own keys for the account.
    key_limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # public key id, "key_…"
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    hmac: Mapped[str] = mapped_column(String(64), unique=True)  # hex HMAC-SHA256 of the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Who made it: "operator" (`avocado admin keys create`) or "console" (a customer).
    origin: Mapped[str] = mapped_column(String(16), default="operator", server_default="operator")


class ModelPrice(Base):
    __tablename__ = "prices"
    __table_args__ = (
        CheckConstraint(
            "input_per_1m >= 0 AND output_per_1m >= 0 AND per_request >= 0", name="nonnegative"
        ),
    )

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_per_1m: Mapped[int] = mapped_column(BigInteger)
    output_per_1m: Mapped[int] = mapped_column(BigInteger)
    per_request: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HoldRow(Base):
    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_nonnegative"),
        CheckConstraint("status IN ('open', 'settled', 'released')", name="status_known"),
        Index("ix_holds_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    # The price quoted when the hold was placed: settling charges it, whatever changed since.
    input_per_1m: Mapped[int] = mapped_column(BigInteger)
    output_per_1m: Mapped[int] = mapped_column(BigInteger)
    per_request: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The server process serving the request (``servers.id``); only a sweep that found that
    # server gone releases the hold. NULL (no server, or a row from before 0003): gone.
    server_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class ServerRow(Base):
    """A live server process and its lease: renewed by its heartbeat, deleted (by itself at
    shutdown, or by a sweep once the lease ran out or the process is seen dead) before anyone
    may release the holds it placed."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "srv_…"
    host: Mapped[str] = mapped_column(String(300))  # where ``pid`` names a process
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # the lease's end


class UsageEvent(Base):
    __tablename__ = "usage_events"
    __table_args__ = (
        CheckConstraint("charge >= 0", name="charge_nonnegative"),
        Index("ix_usage_events_account_id_created_at", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(100), unique=True)
    hold_id: Mapped[str] = mapped_column(ForeignKey("holds.id"), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    charge: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32))  # "ok", "disconnected", "error", …
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("kind IN ('credit', 'charge', 'hold', 'release')", name="kind_known"),
        Index("ix_ledger_entries_account_id_created_at", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)  # signed micro-USD, effect on `balance`
    hold_id: Mapped[str | None] = mapped_column(ForeignKey("holds.id"), nullable=True)
    usage_event_id: Mapped[int | None] = mapped_column(ForeignKey("usage_events.id"), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    idem_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(128))
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # NULL: running
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    server_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # of a running claim


class ConsoleUser(Base):
    """A person who signs in to the web console: a customer (one account) or an operator."""

    __tablename__ = "console_users"
    __table_args__ = (
        CheckConstraint("is_operator OR account_id IS NOT NULL", name="customer_has_account"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id"), nullable=True, index=True
    )
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str] = mapped_column(String(255))  # scrypt, see console_users
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ConsoleSession(Base):
    """A signed-in browser: only the SHA-256 of its cookie is stored, with its CSRF token."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256 of the cookie
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ConsoleAttempt(Base):
    """Sign-in attempts per username or client address in a fixed window, counted in the
    database *before* the password is checked, so that every server process shares them."""

    __tablename__ = "console_attempts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256 of "user:…"
    count: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ConsoleFlash(Base):
    """A just-created API key on its way to the one page that shows it, for one session: read
    once and deleted; encrypted under the server secret (the database alone cannot read it)."""

    __tablename__ = "console_flashes"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # console_sessions.id
    key_id: Mapped[str] = mapped_column(String(40))
    nonce: Mapped[str] = mapped_column(String(32))
    sealed: Mapped[str] = mapped_column(String(400))  # hex: the key XOR an HMAC keystream
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
