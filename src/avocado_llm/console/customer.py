"""The customer console: sign-in, overview, usage, keys, statements, prices.

Every page is scoped to the signed-in user's account (taken from the session, never from the
URL); an id in a URL (a key to revoke) is looked up *within* that account, so another
account's id is simply not found.
"""

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
from avocado_llm.billing.key_limits import KeyRequest
from avocado_llm.billing.statements import month_bounds, statement_csv
from avocado_llm.console import auth
from avocado_llm.console.auth import Refused, Session, billing_of
from avocado_llm.console.deps import CustomerDep, CustomerFormDep, SignedInDep, SignedInFormDep
from avocado_llm.console.views import PREFIX, error_page, redirect, render, secure, usd_float

router = APIRouter()
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
MAX_KEY_DAYS = 36_500
USD_TICKS = {
    "style": "currency",
    "currency": "USD",
    "notation": "standard",
    "maximumSignificantDigits": 3,
}
"""Intl.NumberFormat options: Chart.js formats the spend axis and tooltips as dollars."""
PALETTE = ["#2f7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037"]


# --- sign in and out ----------------------------------------------------------------------


@router.get("/login")
async def console_login_page(request: Request, next: str = "") -> Response:
    session = await auth.current_session(request)
    if session is not None:
        return redirect(_home(session))
    return _login_form(request, next)


def _login_form(request: Request, next: str, error: str = "", status: int = 200) -> Response:
    token = auth.new_login_token()
    response = render(request, "login.html", status_code=status, csrf=token, next=next, error=error)
    auth.set_cookie(request, response, auth.LOGIN_COOKIE, token, auth.LOGIN_MAX_AGE_S)
    return response


@router.post("/login")
async def console_login(request: Request) -> Response:
    form = await auth.read_form(request)
    if form is None or not auth.login_token_ok(request, form):
        return auth.csrf_refused(request)
    username, password = form.one("username").strip(), form.one("password")
    next_path = form.one("next")
    outcome = await run_in_threadpool(
        billing_of(request).console_sign_in_counted,
        username,
        password,
        auth.attempt_limits(request, username),
        auth.ATTEMPT_WINDOW,
    )
    if outcome.throttled:
        return _login_form(
            request, next_path, "Too many sign-in attempts; wait a few minutes.", status=429
        )
    if outcome.user is None:
        return _login_form(request, next_path, "Wrong username or password.", status=401)
    home = f"{PREFIX}/admin" if outcome.user.account_id is None else f"{PREFIX}/"
    response = redirect(auth.safe_next(next_path, home))
    auth.set_cookie(request, response, auth.SESSION_COOKIE, outcome.token, auth.SESSION_MAX_AGE_S)
    auth.clear_cookie(request, response, auth.LOGIN_COOKIE)
    return response


@router.post("/logout")
async def console_logout(request: Request, session: SignedInDep, form: SignedInFormDep) -> Response:
    await run_in_threadpool(billing_of(request).console_sign_out, session.token)
    response = redirect(f"{PREFIX}/login")
    auth.clear_cookie(request, response, auth.SESSION_COOKIE)
    return response


def _home(session: Session) -> str:
    return f"{PREFIX}/" if session.user.account_id is not None else f"{PREFIX}/admin"


# --- overview -----------------------------------------------------------------------------


@router.get("/")
async def console_overview(request: Request, session: CustomerDep) -> Response:
    billing, account = billing_of(request), str(session.user.account)
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    _, month_end = month_bounds(month_start.strftime("%Y-%m"))

    def load() -> dict[str, Any]:
        assert session.user.account_id is not None
        rows = billing.usage_by_day(session.user.account_id, month_start, month_end)
        return {
            "info": billing.account_info(account),
            "month": {
                "name": month_start.strftime("%B %Y"),
                "requests": sum(r["requests"] for r in rows),
                "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
                "completion_tokens": sum(r["completion_tokens"] for r in rows),
                "charge": sum(r["charge"] for r in rows),
            },
            "recent": billing.usage(account, 10),
        }

    data = await run_in_threadpool(load)
    return render(request, "overview.html", session=session, page="overview", **data)


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


# --- keys ---------------------------------------------------------------------------------


async def _keys_page(
    request: Request, session: Session, *, new_key: dict[str, str] | None = None,
    error: str = "", status: int = 200,
) -> Response:  # fmt: skip
    billing = billing_of(request)

    def load() -> dict[str, Any]:
        limits, source = billing.account_key_limits(str(session.user.account))
        priced = sorted(billing.prices())
        if limits is not None and limits.models is not None:
            priced = [m for m in priced if m in limits.models]
        return {
            "keys": billing.api_keys(session.user.account_id),
            "models": priced,
            "limits": limits,
            "limits_text": limits.describe() if limits is not None else None,
            "limits_source": source,
        }

    data = await run_in_threadpool(load)
    return render(
        request, "keys.html", status_code=status, session=session, page="keys",
        new_key=new_key, error=error, **data,
    )  # fmt: skip


@router.get("/keys")
async def console_keys(request: Request, session: CustomerDep) -> Response:
    # A key just made by this session is shown on this one page view, then forgotten: it
    # waited server-side (sealed under the server secret), never in a cookie.
    flashed = await run_in_threadpool(billing_of(request).take_flashed_key, session.token)
    new_key = {"id": flashed[0], "key": flashed[1]} if flashed else None
    return await _keys_page(request, session, new_key=new_key)


def _positive_int(text: str, name: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0 or len(text) > 9:
        raise ValueError(f"{name} must be a positive whole number (or empty: your account's limit)")
    return int(text)


@router.post("/keys")
async def console_keys_create(
    request: Request, session: CustomerDep, form: CustomerFormDep
) -> Response:
    billing = billing_of(request)
    try:
        days = _positive_int(form.one("expires_days"), "Expiry (days)")
        if days is not None and days > MAX_KEY_DAYS:
            raise ValueError(f"Expiry (days) can be at most {MAX_KEY_DAYS} (or empty)")
        asked = KeyRequest(
            models=tuple(dict.fromkeys(m for m in form.get("models", []) if m)),
            rpm=_positive_int(form.one("rpm"), "Requests per minute"),
            tpm=_positive_int(form.one("tpm"), "Tokens per minute"),
            max_tokens=_positive_int(form.one("max_tokens"), "Max tokens per request"),
            expires_at=datetime.now(UTC) + timedelta(days=days) if days else None,
        )
        priced = await run_in_threadpool(billing.prices)
        unknown = [m for m in asked.models if m not in priced]
        if unknown:
            raise ValueError(f"unknown model(s): {', '.join(unknown)}")
        # shown once, on the page this redirects to: held server-side for this session
        await run_in_threadpool(
            billing.create_console_key, str(session.user.account), asked, session.token
        )
    except ValueError as e:
        return await _keys_page(request, session, error=str(e), status=400)
    return redirect(f"{PREFIX}/keys")


@router.post("/keys/{key_id}/revoke")
async def console_keys_revoke(
    request: Request, session: CustomerDep, form: CustomerFormDep, key_id: str
) -> Response:
    assert session.user.account_id is not None
    revoked = await run_in_threadpool(
        billing_of(request).revoke_account_key, session.user.account_id, key_id
    )
    if not revoked:
        return error_page(
            request, 404, "No such key", "Your account has no key with this id.", session=session
        )
    return redirect(f"{PREFIX}/keys")


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


# --- prices -------------------------------------------------------------------------------


@router.get("/prices")
async def console_prices(request: Request, session: CustomerDep) -> Response:
    prices = await run_in_threadpool(billing_of(request).prices)
    return render(
        request, "prices.html", session=session, page="prices", prices=sorted(prices.items())
    )


@router.get("/{anything:path}")
async def console_not_found(request: Request, anything: str) -> Response:
    """Unknown console pages get an HTML 404 (the API's are JSON)."""
    session = await auth.current_session(request)
    return error_page(request, 404, "Not found", "There is no such console page.", session=session)
