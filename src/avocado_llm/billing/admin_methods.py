"""``Billing``'s methods for the operator (``avocado admin``): accounts, credits, keys, prices,
balances, usage and statements."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from avocado_llm.billing import keys, statements
from avocado_llm.billing.base import BillingBase
from avocado_llm.billing.database import insert_or
from avocado_llm.billing.errors import BillingError
from avocado_llm.billing.money import Price
from avocado_llm.billing.records import Plan
from avocado_llm.billing.schema import Account, ModelPrice, utcnow


class AdminMethods(BillingBase):
    """Mixed into ``Billing``: what the operator manages."""

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
