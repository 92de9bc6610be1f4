"""``Billing``: the ledger as the server and the admin CLI use it.

Every method opens its own transaction; every method that moves money moves it in exactly one.
Thread-safe (one engine, a connection pool); processes may share a PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, update
from sqlalchemy.exc import IntegrityError

from avocado_llm.billing import console_queries, console_users, keys, leases, ledger, statements
from avocado_llm.billing import idempotency as idem
from avocado_llm.billing.console_methods import ConsoleMethods
from avocado_llm.billing.console_users import ConsoleUserInfo
from avocado_llm.billing.database import READ_ONLY, insert_or, make_engine, migrate
from avocado_llm.billing.errors import BillingError, HoldClosed
from avocado_llm.billing.money import Price, charge_for
from avocado_llm.billing.records import Hold, KeyInfo, Plan
from avocado_llm.billing.schema import Account, LedgerEntry, ModelPrice, utcnow

TOUCH_INTERVAL_S = 60.0  # last_used_at is written at most this often per key
STATUS_LENGTH = 32  # usage_events.status


class Billing(ConsoleMethods):
    """Keys, prices, prepaid credit with holds, usage events and statements in one database.

    ``database_url`` is ``sqlite:///path`` (embedded default) or ``postgresql+psycopg://…``
    (several server processes); ``secret`` is the server secret that keys are HMAC'd under
    (needed only by :meth:`authenticate` and :meth:`create_key`).
    """

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

    # --- requests -------------------------------------------------------------------------

    def key_digest(self, api_key: str) -> str:
        """The HMAC the ledger stores for ``api_key`` (a cache key that is not the key)."""
        return keys.key_hmac(self._need_secret(), api_key)

    def authenticate(self, api_key: str) -> KeyInfo | None:
        """The key's :class:`KeyInfo`; None when unknown, revoked or expired. Never logs it."""
        with self._reader.begin() as conn:
            info = keys.lookup(conn, self._need_secret(), api_key)
        if info is not None and self._due_touch(info.key_id):
            with self._write() as conn:
                keys.touch(conn, info.key_id, TOUCH_INTERVAL_S)
        return info

    def price(self, model: str) -> Price | None:
        with self._reader.begin() as conn:
            return ledger.get_price(conn, model)

    def prices(self) -> dict[str, Price]:
        """Every priced model (what may be sold), by name."""
        with self._reader.begin() as conn:
            return ledger.all_prices(conn)

    def charge_for(self, price: Price, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-USD for the usage, rounded up once to a whole micro-USD (see ``money``)."""
        return charge_for(price, prompt_tokens, completion_tokens)

    def hold(
        self,
        key: KeyInfo,
        model: str,
        prompt_tokens: int,
        max_completion_tokens: int,
        request_id: str,
        server_id: str | None = None,
    ) -> Hold:
        """Set aside the worst case of a request; :class:`InsufficientCredit` if it is not there.
        ``server_id``: the lease of the server process serving it (:meth:`register_server`);
        without one the hold counts as a crash's, which any starting server releases."""
        try:
            with self._write() as conn:
                return ledger.place_hold(
                    conn, key, model, prompt_tokens, max_completion_tokens, request_id, server_id
                )
        except IntegrityError as e:
            raise BillingError(f"cannot place a hold for request {request_id!r}: {e.orig}") from e

    def settle(
        self,
        hold: Hold,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        status: str = "ok",
        idempotency: tuple[str, str, bytes] | None = None,
        expect_open: bool = False,
    ) -> int:
        """Charge the actual usage (capped at the hold), return the rest, write the usage event
        and ledger entries — and store ``(idem_key, body_hash, response)`` if given — in one
        transaction. Exactly once: settling a closed hold changes nothing and returns the
        charge recorded the first time (0 if it was released) — or, with ``expect_open``,
        raises :class:`HoldClosed` (the server must then not give the answer away)."""
        status = status[:STATUS_LENGTH]  # an odd status must never stop a request's billing
        with self._write() as conn:
            closed_now, charge = ledger.settle_hold(
                conn, hold.id, prompt_tokens, completion_tokens, status
            )
            if not closed_now and expect_open:
                raise HoldClosed(
                    f"the hold of request {hold.request_id!r} was released before it was "
                    "settled (a server process restarted while it ran); nothing was charged: "
                    "retry the request"
                )
            if closed_now and idempotency is not None:
                idempotency_key, body_hash, response = idempotency
                idem.save(conn, hold.key_id, idempotency_key, body_hash, response)
            return charge

    def release(self, hold: Hold) -> None:
        """Nothing was produced: close the hold and return all of it (no usage event)."""
        with self._write() as conn:
            ledger.release_hold(conn, hold.id, "released: nothing produced")

    def release_stale_holds(self, older_than_s: float = 0) -> int:
        """Release the holds of server processes that are gone (call at start-up, and now and
        then: a sweep); returns how many.

        A server is gone when its lease ran out or its process no longer exists (see
        ``leases``); holds without a server (placed without :meth:`register_server`, or before
        leases existed) count as gone. The holds of live servers are never released, so
        several servers may share the database. Only holds older than ``older_than_s`` are
        released. Running idempotency claims of gone servers are dropped too, so their retries
        can run.
        """
        with self._write() as conn:
            leases.forget_gone_servers(conn)
        with self._reader.begin() as conn:
            stale = leases.orphan_open_holds(conn, older_than_s)
        released = 0
        for hold_id in stale:  # one short transaction each: no long write lock at start-up
            with self._write() as conn:
                released += ledger.release_hold(conn, hold_id, "released: its server is gone")
        with self._write() as conn:
            leases.purge_orphan_claims(conn, older_than_s)
        return released

    # --- server leases (see leases) -------------------------------------------------------

    def register_server(self, lease_s: float) -> str:
        """A lease for this server process (a ``servers`` row); its id, for :meth:`hold`."""
        with self._write() as conn:
            return leases.register(conn, lease_s)

    def renew_server(self, server_id: str, lease_s: float) -> bool:
        """Renew the lease; False when a sweep found the server gone (its holds may be
        released: the server must stop serving them)."""
        with self._write() as conn:
            return leases.renew(conn, server_id, lease_s)

    def unregister_server(self, server_id: str) -> None:
        """End the lease (a clean shutdown): holds still open become a sweep's to release."""
        with self._write() as conn:
            leases.unregister(conn, server_id)

    def server_lease(self, lease_s: float, older_than_s: float = 0) -> leases.ServerLease:
        """This process's lease, not yet started: its heartbeat renews it and sweeps
        (:meth:`release_stale_holds` with ``older_than_s``) every ``lease_s``."""
        return leases.ServerLease(
            register=lambda: self.register_server(lease_s),
            renew=lambda server_id: self.renew_server(server_id, lease_s),
            unregister=self.unregister_server,
            sweep=lambda: self.release_stale_holds(older_than_s),
            lease_s=lease_s,
        )

    # --- idempotency ----------------------------------------------------------------------

    def idempotent_response(self, key_id: str, idem_key: str, body_hash: str) -> bytes | None:
        """The stored answer of a retry; :class:`IdempotencyConflict` for another body."""
        with self._reader.begin() as conn:
            return idem.stored(conn, key_id, idem_key, body_hash)

    def claim_idempotency(
        self, key_id: str, idem_key: str, body_hash: str, server_id: str | None = None
    ) -> bytes | None:
        """Like :meth:`idempotent_response`, but when there is no answer yet, mark the key as
        in progress so a concurrent retry gets :class:`IdempotencyInProgress` (409). After
        a claim, either :meth:`settle` with ``idempotency=`` or :meth:`abandon_idempotency`.
        ``server_id``: the server running it; a sweep drops the claim once that one is gone
        (at once when None)."""
        with self._write() as conn:
            ledger.check_key(conn, key_id)  # a cached key revoked since: no stored answer either
            stored = idem.claim(conn, key_id, idem_key, body_hash)
            if stored is None and server_id is not None:
                leases.own_claim(conn, key_id, idem_key, server_id)
            return stored

    def abandon_idempotency(self, key_id: str, idem_key: str) -> None:
        """Forget an in-progress claim (the request failed before an answer existed)."""
        with self._write() as conn:
            idem.abandon(conn, key_id, idem_key)

    def purge_idempotency(self, older_than_s: float = idem.KEEP_S) -> int:
        """Delete idempotency records older than ``older_than_s`` (default 24 h)."""
        with self._write() as conn:
            return idem.purge(conn, older_than_s)

    # --- admin ----------------------------------------------------------------------------

    def create_account(self, name: str, credits_micro: int = 0) -> int:
        """A new account with ``credits_micro`` micro-USD of credit; returns its id."""
        if not name.strip():
            raise ValueError("an account needs a non-empty name")
        try:
            with self._write() as conn:
                account_id = conn.execute(
                    insert(Account).values(name=name, balance=0, held=0).returning(Account.id)
                ).scalar_one()
                if credits_micro:
                    self._credit(conn, account_id, credits_micro, "initial credit")
                return int(account_id)
        except IntegrityError as e:
            raise BillingError(f"an account named {name!r} already exists") from e

    def add_credits(self, name: str, micro: int, reason: str) -> None:
        with self._write() as conn:
            self._credit(conn, statements.account_row(conn, name).id, micro, reason)

    def create_key(
        self,
        account: str,
        *,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: datetime | None = None,
        plan: Plan | None = None,
    ) -> tuple[str, str]:
        """``(key_id, key)``: show the key once; only its HMAC is stored."""
        with self._write() as conn:
            return keys.insert_key(
                conn,
                self._need_secret(),
                account,
                models=models,
                rpm=rpm,
                tpm=tpm,
                expires_at=expires_at,
                plan=plan,
            )

    def revoke_key(self, key_id: str) -> None:
        with self._write() as conn:
            keys.revoke(conn, key_id)

    def set_price(
        self, model: str, input_per_1m: int, output_per_1m: int, per_request: int = 0
    ) -> None:
        """Set (or replace) a model's price; open holds keep the price they were placed at."""
        price = Price(input_per_1m, output_per_1m, per_request)  # validates
        values = {**asdict(price), "updated_at": utcnow()}
        with self._write() as conn:
            conn.execute(
                insert_or(conn, ModelPrice)
                .values(model=model, **values)
                .on_conflict_do_update(index_elements=["model"], set_=values)
            )

    def balance(self, account: str) -> int:
        """Available micro-USD (what new holds can take)."""
        return int(self.account_info(account)["balance"])

    def account_info(self, account: str) -> dict[str, Any]:
        """``{"id", "name", "balance", "held", "created_at"}`` (micro-USD)."""
        with self._reader.begin() as conn:
            return dict(statements.account_row(conn, account)._asdict())

    def usage(self, account: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The account's usage events, newest first."""
        with self._reader.begin() as conn:
            return statements.usage_events(conn, account, limit)

    def statement(self, account: str, month: str) -> dict[str, Any]:
        """Month ``YYYY-MM`` (UTC): opening + credits − charges = closing, from the ledger."""
        with self._reader.begin() as conn:
            return statements.statement(conn, account, month)

    # --- web console (see console_users and console_queries) -------------------------------

    def create_console_user(
        self, username: str, password: str, *, account: str | None = None, operator: bool = False
    ) -> int:
        """A console sign-in for ``account`` (a customer) or for an operator; returns its id."""
        try:
            with self._write() as conn:
                return console_users.create_user(
                    conn, username, password, account=account, operator=operator
                )
        except IntegrityError as e:
            raise BillingError(f"cannot create console user {username!r}: {e.orig}") from e

    def console_users(self) -> list[dict[str, Any]]:
        with self._reader.begin() as conn:
            return console_users.list_users(conn)

    def disable_console_user(self, username: str) -> None:
        with self._write() as conn:
            console_users.disable_user(conn, username)

    def console_sign_in(
        self, username: str, password: str
    ) -> tuple[ConsoleUserInfo, str, str] | None:
        """``(user, session_token, csrf_token)`` for the right password, else None."""
        with self._reader.begin() as conn:  # scrypt runs outside the write lock
            user = console_users.check_password(conn, username, password)
        if user is None:
            return None
        with self._write() as conn:
            token, csrf = console_users.start_session(conn, user.id)
        return user, token, csrf

    def console_session(self, token: str) -> tuple[ConsoleUserInfo, str] | None:
        """``(user, csrf_token)`` of a live console session, else None."""
        with self._reader.begin() as conn:
            return console_users.session_user(conn, token)

    def console_sign_out(self, token: str) -> None:
        with self._write() as conn:
            console_users.end_session(conn, token)

    def usage_by_day(self, account_id: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Requests, tokens and charges per UTC day and model in ``[start, end)``."""
        with self._reader.begin() as conn:
            return console_queries.usage_by_day(conn, account_id, start, end)

    def api_keys(self, account_id: int | None = None) -> list[dict[str, Any]]:
        """API keys (prefix, limits, dates, state; never secrets), of one account or all."""
        with self._reader.begin() as conn:
            return console_queries.list_keys(conn, account_id)

    def revoke_account_key(self, account_id: int, key_id: str) -> bool:
        """Revoke a key of ``account_id``; False if that account has no such key."""
        with self._write() as conn:
            return console_queries.revoke_account_key(conn, account_id, key_id)

    def open_holds(self) -> list[dict[str, Any]]:
        with self._reader.begin() as conn:
            return console_queries.open_holds(conn)

    def accounts(self) -> list[dict[str, Any]]:
        with self._reader.begin() as conn:
            return console_queries.accounts(conn)

    def account_name(self, account_id: int) -> str | None:
        with self._reader.begin() as conn:
            return console_queries.account_name(conn, account_id)

    # --- internals ------------------------------------------------------------------------

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
