"""The core of ``Billing``: its engine, the write lock, the server secret, and the helpers that
every group of methods uses (a writing transaction, a credit, the throttle on ``last_used_at``).

Every method opens its own transaction; every method that moves money moves it in exactly one.
Thread-safe (one engine, a connection pool); processes may share a PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, insert, update

from avocado_llm.billing.database import READ_ONLY, make_engine, migrate
from avocado_llm.billing.errors import BillingError
from avocado_llm.billing.schema import Account, LedgerEntry

TOUCH_INTERVAL_S = 60.0  # last_used_at is written at most this often per key


class BillingBase:
    """The engine (``sqlite:///path`` or ``postgresql+psycopg://…``) and the server secret that
    keys are HMAC'd under; the groups of ``Billing``'s methods are mixed in on top of it."""

    def __init__(self, database_url: str, secret: str | bytes) -> None:
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        self._engine = make_engine(database_url)
        self._reader = self._engine.execution_options(**{READ_ONLY: True})
        # SQLite has one writer at a time anyway; queueing writers of this process on a lock
        # wakes the next one at once, where SQLite's busy handler would sleep and poll.
        self._write_lock = threading.Lock() if self.single_writer else contextlib.nullcontext()
        self._touched: dict[str, float] = {}
        self._touch_lock = threading.Lock()

    @property
    def single_writer(self) -> bool:
        """Whether the database takes one writer at a time (SQLite): callers gain nothing from
        running its calls in parallel (see ``Services.ledger``)."""
        return self._engine.dialect.name == "sqlite"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for reports and tests; money moves only through methods)."""
        return self._engine

    def migrate(self) -> None:
        """Create or upgrade the schema (``alembic upgrade head``); safe to call at every start."""
        migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def _credit(self, conn: Connection, account_id: int, micro: int, reason: str) -> None:
        if micro <= 0:
            raise ValueError(f"credits must be a positive number of micro-USD, got {micro}")
        conn.execute(
            update(Account).where(Account.id == account_id).values(balance=Account.balance + micro)
        )
        conn.execute(
            insert(LedgerEntry).values(
                account_id=account_id, kind="credit", amount=micro, reason=reason
            )
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A writing transaction: committed at the end of the block, rolled back on error."""
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    def _need_secret(self) -> bytes:
        if not self._secret:
            raise BillingError("no server secret: set AVOCADO_SECRET to handle API keys")
        return self._secret

    def _due_touch(self, key_id: str) -> bool:
        """Whether this process should write ``last_used_at`` now (at most once a minute)."""
        now = time.monotonic()
        with self._touch_lock:
            if now - self._touched.get(key_id, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
                return False
            self._touched[key_id] = now
            return True
