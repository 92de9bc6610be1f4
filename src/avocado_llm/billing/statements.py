"""Read-only views of the ledger: balances, usage, and monthly statements.

A statement is built from ledger entries only. Its money is the account's *funds*
(available + held): the month's ``opening`` plus its ``credits`` minus its ``charges`` equals
its ``closing``, and ``closing`` is independently the sum of every credit and charge entry
before the month's end. Holds only move money between available and held, so they appear
as ``held_at_close`` and not as income or expense.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from avocado_llm.billing.errors import NotFound
from avocado_llm.billing.money import format_usd
from avocado_llm.billing.schema import Account, HoldRow, LedgerEntry, UsageEvent

FUNDS = ("credit", "charge")  # entry kinds that change available + held
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def account_row(conn: Connection, name: str) -> Any:
    row = conn.execute(
        select(Account.id, Account.name, Account.balance, Account.held, Account.created_at).where(
            Account.name == name
        )
    ).first()
    if row is None:
        raise NotFound(f"no account named {name!r}; create it with `avocado admin accounts create`")
    return row


def usage_events(conn: Connection, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The account's usage events, newest first."""
    account = account_row(conn, name)
    query = (
        select(UsageEvent)
        .where(UsageEvent.account_id == account.id)
        .order_by(UsageEvent.created_at.desc(), UsageEvent.id.desc())
        .limit(limit)
    )
    columns = ("request_id", "model", "key_id", "prompt_tokens", "completion_tokens", "charge")
    return [
        {"created_at": row.created_at.isoformat(), **{c: getattr(row, c) for c in columns}}
        | {"status": row.status}
        for row in conn.execute(query)
    ]


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-03"`` → (2026-03-01T00:00Z, 2026-04-01T00:00Z)."""
    match = _MONTH.match(month)
    if match is None:
        raise ValueError(f"month must look like YYYY-MM (e.g. 2026-03), got {month!r}")
    year, mon = int(match[1]), int(match[2])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def statement(conn: Connection, name: str, month: str) -> dict[str, Any]:
    """The month's statement of ``name`` (all amounts in micro-USD)."""
    start, end = month_bounds(month)
    account = account_row(conn, name)
    entries = LedgerEntry.__table__.c

    def total(*where: Any) -> int:
        query = select(func.coalesce(func.sum(entries.amount), 0)).where(
            entries.account_id == account.id, *where
        )
        return int(conn.scalar(query) or 0)

    funds = entries.kind.in_(FUNDS)
    opening = total(funds, entries.created_at < start)
    closing = total(funds, entries.created_at < end)
    held_at_close = -total(entries.kind.in_(("hold", "release")), entries.created_at < end)
    in_month = (entries.created_at >= start, entries.created_at < end)
    credits = total(entries.kind == "credit", *in_month)
    charges = -total(entries.kind == "charge", *in_month)
    lines = conn.execute(
        select(
            entries.created_at,
            entries.kind,
            entries.amount,
            entries.reason,
            UsageEvent.request_id,
            UsageEvent.model,
            UsageEvent.prompt_tokens,
            UsageEvent.completion_tokens,
        )
        .outerjoin(UsageEvent, UsageEvent.id == entries.usage_event_id)
        .where(entries.account_id == account.id, funds, *in_month)
        .order_by(entries.created_at, entries.id)
    ).all()
    running, rows, by_model = opening, [], {}
    for line in lines:
        running += line.amount
        rows.append(
            {**line._asdict(), "created_at": line.created_at.isoformat(), "balance": running}
        )
        if line.kind == "charge":
            model = by_model.setdefault(
                line.model,
                dict.fromkeys(("requests", "prompt_tokens", "completion_tokens", "charges"), 0)
                | {"model": line.model},
            )
            model["requests"] += 1
            model["prompt_tokens"] += line.prompt_tokens
            model["completion_tokens"] += line.completion_tokens
            model["charges"] -= line.amount
    return {
        "account": account.name,
        "month": month,
        "currency": "USD",
        "unit": "micro-USD",
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "opening": opening,
        "credits": credits,
        "charges": charges,
        "closing": closing,
        "held_at_close": held_at_close,
        "requests": sum(m["requests"] for m in by_model.values()),
        "by_model": sorted(by_model.values(), key=lambda m: m["model"]),
        "entries": rows,
    }


def open_hold_count(conn: Connection, account_id: int | None = None) -> int:
    query = select(func.count()).select_from(HoldRow).where(HoldRow.status == "open")
    if account_id is not None:
        query = query.where(HoldRow.account_id == account_id)
    return int(conn.scalar(query) or 0)


CSV_COLUMNS = (
    "created_at",
    "kind",
    "request_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "amount_micro",
    "amount_usd",
    "balance_micro",
    "balance_usd",
    "reason",
)


def statement_csv(s: dict[str, Any]) -> str:
    """A statement as CSV: an opening line, one line per credit or charge, a closing line
    (what ``avocado admin statement --format csv`` prints and the console downloads)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    rows = [
        {"created_at": s["period_start"], "kind": "opening", "amount": 0, "balance": s["opening"]},
        *s["entries"],
        {"created_at": s["period_end"], "kind": "closing", "amount": 0, "balance": s["closing"]},
    ]
    for row in rows:
        writer.writerow(
            {
                **row,
                "amount_micro": row["amount"],
                "amount_usd": format_usd(row["amount"]),
                "balance_micro": row["balance"],
                "balance_usd": format_usd(row["balance"]),
            }
        )
    return out.getvalue()
