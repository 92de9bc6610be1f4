"""Engines for the ledger's database and its migrations.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every writing
transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers
queue on ``busy_timeout`` instead of one failing with "database is locked" when it upgrades a
read lock. PostgreSQL (several server processes) needs nothing special: each money move is one
conditional ``UPDATE`` inside one transaction, which READ COMMITTED makes atomic.

SQLite commits with ``synchronous=NORMAL`` by default: in WAL mode that survives any crash of
the process, but a power loss may undo the last commits (never corrupts). The worst outcome is
that a few just-settled requests become open holds again, released at the next start: the
customer is not charged for them; no one is ever overdrawn or charged twice. Add
``?synchronous=FULL`` to the URL to fsync every commit instead (about 3 ms more per commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

import avocado_llm.migrations as migrations

BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "avocado_read_only"  # execution option: a plain (deferred) BEGIN on SQLite
MIGRATION_LOCK = 0x61766F63  # "avoc": PostgreSQL advisory lock serialising migrations


def make_engine(database_url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql+psycopg://…``, tuned for the ledger."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=40, pool_recycle=1800)
    synchronous = url.query.get("synchronous", "NORMAL")
    if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
    url = url.difference_update_query(["synchronous"])
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if url.database in (None, "", ":memory:"):
        kwargs["poolclass"] = StaticPool  # one shared in-memory database
    else:
        kwargs.update(pool_size=10, max_overflow=40)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own: we do
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's configuration for the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` in one transaction; safe when several processes start at once
    (PostgreSQL: an advisory lock; SQLite: the write lock of ``BEGIN IMMEDIATE``)."""
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def insert_or(conn: Connection, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An ``INSERT`` that can take ``ON CONFLICT …`` clauses (both databases speak them)."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)
