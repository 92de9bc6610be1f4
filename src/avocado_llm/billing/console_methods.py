"""The ledger's methods for the web console's guards, mixed into ``Billing``: account key
limits (what a customer may give the keys they make), sign-in attempts counted before the
password is checked, and a just-created key held server-side for its one display.

Kept apart from ``service`` (which is about money); like every ``Billing`` method, each opens
its own transaction(s).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine

from avocado_llm.billing import console_users, key_limits, keys
from avocado_llm.billing.console_users import ConsoleUserInfo
from avocado_llm.billing.key_limits import KeyLimits, KeyRequest
from avocado_llm.billing.schema import utcnow


@dataclass(frozen=True)
class SignIn:
    """The outcome of a counted sign-in: a session, or why not."""

    user: ConsoleUserInfo | None = None
    token: str = ""
    throttled: bool = False
    """Too many attempts: refused whatever the password (it may not even have been checked)."""


class ConsoleMethods:
    """Mixed into ``Billing``, which provides the engine, the write lock and the secret."""

    _reader: Engine

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError  # Billing's

    def _need_secret(self) -> bytes:
        raise NotImplementedError  # Billing's

    # --- account key limits ---------------------------------------------------------------

    def account_key_limits(self, account: str) -> tuple[KeyLimits | None, str]:
        """The ceiling of keys made in the console for ``account``, and where it comes from
        (``key_limits.EXPLICIT`` or ``DERIVED``); ``(None, "")`` when there is none yet."""
        with self._reader.begin() as conn:
            return key_limits.effective(conn, key_limits.account_id_of(conn, account))

    def set_account_key_limits(self, account: str, limits: KeyLimits | None) -> None:
        """Set ``account``'s ceiling for console keys (None: the meet of the operator's keys).
        Keys that exist keep their limits: revoke those that should not."""
        with self._write() as conn:
            key_limits.store(conn, key_limits.account_id_of(conn, account), limits)

    def create_console_key(
        self, account: str, asked: KeyRequest, session_token: str | None = None
    ) -> tuple[str, str]:
        """A key made by a customer: ``asked`` within the account's limits, in one transaction
        with reading them (and, given ``session_token``, with holding the key for that
        session's :meth:`take_flashed_key`). ValueError, with a message for the customer, when
        the account has no limits yet or ``asked`` goes beyond them."""
        with self._write() as conn:
            ceiling, _ = key_limits.effective(conn, key_limits.account_id_of(conn, account))
            if ceiling is None:
                raise ValueError(
                    "your operator has not set what keys made here may do yet; ask them to "
                    "(`avocado admin accounts limits`) or for a key"
                )
            limits = key_limits.narrow(ceiling, asked, utcnow())
            key_id, key = keys.insert_key(
                conn,
                self._need_secret(),
                account,
                models=list(limits.models) if limits.models is not None else None,
                rpm=limits.rpm,
                tpm=limits.tpm,
                expires_at=limits.expires_by,
                plan=limits.plan,
                origin=key_limits.CONSOLE,
            )
            if session_token is not None:
                console_users.put_flash(conn, self._need_secret(), session_token, key_id, key)
            return key_id, key

    # --- sign-in attempts -----------------------------------------------------------------

    def console_sign_in_counted(
        self, username: str, password: str, limits: dict[str, int], window: timedelta
    ) -> SignIn:
        """Sign in, counting the attempt first against each key of ``limits`` (``user:…`` and
        ``ip:…`` → allowed attempts per window). Over any limit — when counted, or again after
        the ~50 ms password check (concurrent attempts arrived meanwhile) — the answer is
        ``throttled`` whether the password was right or not, so it tells a guesser nothing."""
        names = list(limits)

        def over(counts: list[int]) -> bool:
            return any(c > limits[n] for n, c in zip(names, counts, strict=True))

        with self._write() as conn:
            if over(console_users.count_attempts(conn, names, window)):
                return SignIn(throttled=True)
        user = None
        if username and password and len(password) <= console_users.MAX_PASSWORD:
            with self._reader.begin() as conn:  # scrypt runs outside the write lock
                user = console_users.check_password(conn, username, password)
        with self._write() as conn:
            if over(console_users.attempt_counts(conn, names, window)):
                return SignIn(throttled=True)
            if user is None:
                return SignIn()
            for name in names:  # a right password: this attempt was not a failure
                if name.startswith("user:"):
                    console_users.forget_attempts(conn, name)
                else:
                    console_users.uncount_attempt(conn, name)
            token, _csrf = console_users.start_session(conn, user.id)
        return SignIn(user=user, token=token)

    # --- a new key's one display ----------------------------------------------------------

    def take_flashed_key(self, session_token: str) -> tuple[str, str] | None:
        """``(key_id, key)`` held for this session, forgotten as it is read."""
        with self._write() as conn:
            return console_users.take_flash(conn, self._need_secret(), session_token)
