"""``Billing``'s methods for the web console: its users and sessions (see ``console_users``)
and what its pages read (see ``console_queries``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from avocado_llm.billing import console_queries, console_users
from avocado_llm.billing.base import BillingBase
from avocado_llm.billing.console_users import ConsoleUserInfo
from avocado_llm.billing.errors import BillingError


class ConsoleUserMethods(BillingBase):
    """Mixed into ``Billing``: console sign-ins, sessions and page data."""

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
