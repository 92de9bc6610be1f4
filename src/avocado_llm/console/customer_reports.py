"""The customer console's reports: usage per day and model (a page with charts, a CSV) and
monthly statements (a page, CSV and JSON). Scoped to the signed-in user's account, like every
customer page (:mod:`avocado_llm.console.customer` includes this router)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from avocado_llm.billing import MICRO
from avocado_llm.billing.statements import month_bounds, statement_csv
from avocado_llm.console.auth import Refused, Session, billing_of
from avocado_llm.console.deps import CustomerDep
from avocado_llm.console.views import error_page, render, secure, usd_float

router = APIRouter()
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
USD_TICKS = {
    "style": "currency",
    "currency": "USD",
    "notation": "standard",
    "maximumSignificantDigits": 3,
}
"""Intl.NumberFormat options: Chart.js formats the spend axis and tooltips as dollars."""
PALETTE = ["#2f7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037"]


# --- usage --------------------------------------------------------------------------------


def _range(start: str, end: str) -> tuple[date, date, str]:
    """The chosen days (inclusive), defaulting to the last 30; an error message if invalid."""
    today = datetime.now(UTC).date()
    error = ""
    try:
        last = date.fromisoformat(end) if end else today
        first = date.fromisoformat(start) if start else last - timedelta(DEFAULT_RANGE_DAYS - 1)
    except ValueError:
        first, last = today - timedelta(DEFAULT_RANGE_DAYS - 1), today
        error = "Dates must look like YYYY-MM-DD; showing the last 30 days."
    if last < first:
        first, last = last, first
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        first = last - timedelta(MAX_RANGE_DAYS - 1)
        error = f"At most {MAX_RANGE_DAYS} days at once; showing the last {MAX_RANGE_DAYS}."
    return first, last, error


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return start, end


async def _usage_rows(
    request: Request, session: Session, first: date, last: date
) -> list[dict[str, Any]]:
    assert session.user.account_id is not None
    start, end = _bounds(first, last)
    return await run_in_threadpool(
        billing_of(request).usage_by_day, session.user.account_id, start, end
    )


def _usage_charts(rows: list[dict[str, Any]], first: date, last: date) -> dict[str, Any]:
    """Chart.js configurations: tokens and spend per day, one stacked series per model."""
    days = [(first + timedelta(i)).isoformat() for i in range((last - first).days + 1)]
    models = sorted({r["model"] for r in rows})
    index = {d: i for i, d in enumerate(days)}
    tokens = {m: [0] * len(days) for m in models}
    spend = {m: [0.0] * len(days) for m in models}
    for r in rows:
        i = index[r["day"]]
        tokens[r["model"]][i] += r["prompt_tokens"] + r["completion_tokens"]
        spend[r["model"]][i] += usd_float(r["charge"])

    def config(
        series: dict[str, list[Any]], title: str, y_format: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "type": "bar",
            "data": {
                "labels": days,
                "datasets": [
                    {
                        "label": m,
                        "data": series[m],
                        "backgroundColor": PALETTE[i % len(PALETTE)],
                    }
                    for i, m in enumerate(models)
                ],
            },
            "options": {
                "animation": False,
                "responsive": True,
                "maintainAspectRatio": False,
                "plugins": {"title": {"display": True, "text": title}},
                "scales": {
                    "x": {"stacked": True},
                    "y": {"stacked": True, "beginAtZero": True, "ticks": {"format": y_format}},
                },
            },
        }

    return {
        "tokens": config(tokens, "Tokens per day (prompt + completion)", {}),
        "spend": config(spend, "Spend per day (USD)", USD_TICKS),
    }


@dataclass(frozen=True)
class _Usage:
    first: date
    last: date
    error: str  # why the asked days were not taken ("" when they were)
    rows: list[dict[str, Any]]


async def _usage(request: Request, session: CustomerDep, start: str = "", end: str = "") -> _Usage:
    """The customer's usage per day and model in the days asked (``?start=&end=``)."""
    first, last, error = _range(start, end)
    return _Usage(first, last, error, await _usage_rows(request, session, first, last))


UsageDep = Annotated[_Usage, Depends(_usage)]


@router.get("/usage")
async def console_usage(request: Request, session: CustomerDep, usage: UsageDep) -> Response:
    first, last, error, rows = usage.first, usage.last, usage.error, usage.rows
    totals = {
        k: sum(r[k] for r in rows)
        for k in ("requests", "prompt_tokens", "completion_tokens", "charge")
    }
    return render(
        request,
        "usage.html",
        session=session,
        page="usage",
        first=first,
        last=last,
        error=error,
        rows=rows,
        totals=totals,
        charts=_usage_charts(rows, first, last),
    )


@router.get("/usage.csv")
async def console_usage_csv(session: CustomerDep, usage: UsageDep) -> Response:
    first, last, rows = usage.first, usage.last, usage.rows
    out = io.StringIO()
    columns = ["day", "model", "requests", "prompt_tokens", "completion_tokens"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "charge_micro", "charge_usd"])
    for r in rows:
        writer.writerow([*(r[c] for c in columns), r["charge"], f"{r['charge'] / MICRO:.6f}"])
    name = f"usage-{session.user.account}-{first}-{last}.csv"
    return _download(out.getvalue(), "text/csv; charset=utf-8", name)


def _download(body: str, media_type: str, filename: str) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    response = Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )
    return secure(response)


# --- statements ---------------------------------------------------------------------------


def _months(since: datetime) -> list[str]:
    """Every month from the account's creation to now, newest first."""
    now = datetime.now(UTC)
    year, month, months = since.year, since.month, []
    while (year, month) <= (now.year, now.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months[::-1]


async def _statement(request: Request, session: Session, month: str) -> dict[str, Any]:
    """The account's statement of ``month``; :class:`Refused` (404) when it is not a month."""
    try:
        month_bounds(month)
    except ValueError:
        page = error_page(
            request, 404, "No such month", "Months look like 2026-03.", session=session
        )
        raise Refused(page) from None
    return await run_in_threadpool(billing_of(request).statement, str(session.user.account), month)


@router.get("/statements")
async def console_statements(request: Request, session: CustomerDep, month: str = "") -> Response:
    info = await run_in_threadpool(billing_of(request).account_info, str(session.user.account))
    months = _months(info["created_at"])
    month = month or months[0]
    statement = await _statement(request, session, month)
    return render(
        request, "statements.html", session=session, page="statements",
        months=months, month=month, s=statement,
    )  # fmt: skip


@router.get("/statements/{month}.csv")
async def console_statement_csv(request: Request, session: CustomerDep, month: str) -> Response:
    statement = await _statement(request, session, month)
    name = f"statement-{session.user.account}-{month}.csv"
    return _download(statement_csv(statement), "text/csv; charset=utf-8", name)


@router.get("/statements/{month}.json")
async def console_statement_json(request: Request, session: CustomerDep, month: str) -> Response:
    statement = await _statement(request, session, month)
    name = f"statement-{session.user.account}-{month}.json"
    return _download(json.dumps(statement, indent=2), "application/json", name)
