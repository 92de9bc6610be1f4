"""The operator console (``/console/admin``): accounts and top-ups, keys across accounts,
prices, open holds, and requests and errors per minute. Every page refuses customers (403)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from avocado_llm.billing import BillingError, NotFound, Price, parse_usd
from avocado_llm.console.auth import Session, billing_of
from avocado_llm.console.deps import OperatorDep, OperatorFormDep
from avocado_llm.console.rates import RateSampler
from avocado_llm.console.views import PREFIX, error_page, redirect, render

router = APIRouter(prefix="/admin")
REASON_MAX = 400  # ledger_entries.reason holds 500 characters; " [by <operator>]" is added


def _rates_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def line(label: str, key: str, color: str) -> dict[str, Any]:
        return {
            "label": label,
            "data": [r[key] for r in rows],
            "borderColor": color,
            "backgroundColor": color,
            "tension": 0.2,
            "pointRadius": 2,
        }

    return {
        "type": "line",
        "data": {
            "labels": [r["minute"] for r in rows],
            "datasets": [
                line("requests/min", "requests", "#1565c0"),
                line("refused (4xx)/min", "client_errors", "#ef6c00"),
                line("errors (5xx)/min", "server_errors", "#c62828"),
            ],
        },
        "options": {
            "animation": False,
            "responsive": True,
            "maintainAspectRatio": False,
            "plugins": {"title": {"display": True, "text": "Last 30 minutes (UTC)"}},
            "scales": {"y": {"beginAtZero": True, "ticks": {"precision": 0}}},
        },
    }


@router.get("")
async def console_admin(request: Request, session: OperatorDep) -> Response:
    sampler: RateSampler = request.app.state.console_rates
    billing = billing_of(request)

    def load() -> dict[str, Any]:
        accounts = billing.accounts()
        return {
            "n_accounts": len(accounts),
            "total_balance": sum(a["balance"] for a in accounts),
            "total_held": sum(a["held"] for a in accounts),
            "n_holds": len(billing.open_holds()),
        }

    data = await run_in_threadpool(load)
    rows = sampler.per_minute(30)
    return render(
        request, "admin/overview.html", session=session, page="admin",
        rows=rows, last=sampler.last_60s(), chart=_rates_chart(rows), **data,
    )  # fmt: skip


async def _accounts_page(
    request: Request, session: Session, *, message: str = "", error: str = "", status: int = 200
) -> Response:
    accounts = await run_in_threadpool(billing_of(request).accounts)
    return render(
        request, "admin/accounts.html", status_code=status, session=session,
        page="admin/accounts", accounts=accounts, message=message, error=error,
    )  # fmt: skip


@router.get("/accounts")
async def console_admin_accounts(request: Request, session: OperatorDep) -> Response:
    return await _accounts_page(request, session)


@router.post("/topups")
async def console_admin_topup(
    request: Request, session: OperatorDep, form: OperatorFormDep
) -> Response:
    """Add credit to an account; the reason (and who) is written to the ledger entry."""
    account, reason = form.one("account"), form.one("reason").strip()
    try:
        micro = parse_usd(form.one("amount"))
        if micro <= 0:
            raise ValueError("the amount must be more than 0")
        if not reason:
            raise ValueError("give a reason: it is written to the ledger and the statement")
        if len(reason) > REASON_MAX:
            raise ValueError(f"the reason is longer than {REASON_MAX} characters")
        full_reason = f"{reason} [by {session.user.username}]"
        await run_in_threadpool(billing_of(request).add_credits, account, micro, full_reason)
    except (ValueError, BillingError) as e:
        return await _accounts_page(request, session, error=str(e), status=400)
    return redirect(f"{PREFIX}/admin/accounts?topped_up=1")


@router.get("/keys")
async def console_admin_keys(request: Request, session: OperatorDep) -> Response:
    keys = await run_in_threadpool(billing_of(request).api_keys, None)
    return render(request, "admin/keys.html", session=session, page="admin/keys", keys=keys)


@router.post("/keys/{key_id}/revoke")
async def console_admin_keys_revoke(
    request: Request, session: OperatorDep, form: OperatorFormDep, key_id: str
) -> Response:
    """Revoke any account's key (a leaked one, say)."""
    try:
        await run_in_threadpool(billing_of(request).revoke_key, key_id)
    except NotFound:
        return error_page(request, 404, "No such key", "No key has this id.", session=session)
    return redirect(f"{PREFIX}/admin/keys")


async def _prices_page(
    request: Request, session: Session, *, error: str = "", status: int = 200
) -> Response:
    prices = await run_in_threadpool(billing_of(request).prices)
    return render(
        request, "admin/prices.html", status_code=status, session=session,
        page="admin/prices", prices=sorted(prices.items()), error=error,
    )  # fmt: skip


@router.get("/prices")
async def console_admin_prices(request: Request, session: OperatorDep) -> Response:
    return await _prices_page(request, session)


@router.post("/prices")
async def console_admin_prices_set(
    request: Request, session: OperatorDep, form: OperatorFormDep
) -> Response:
    model = form.one("model").strip()
    try:
        if not model or len(model) > 200:
            raise ValueError("a model name has 1 to 200 characters")
        price = Price(
            parse_usd(form.one("input_per_1m")),
            parse_usd(form.one("output_per_1m")),
            parse_usd(form.one("per_request") or "0"),
        )
    except ValueError as e:
        return await _prices_page(request, session, error=str(e), status=400)
    await run_in_threadpool(
        billing_of(request).set_price,
        model,
        price.input_per_1m,
        price.output_per_1m,
        price.per_request,
    )
    return redirect(f"{PREFIX}/admin/prices")


@router.get("/holds")
async def console_admin_holds(request: Request, session: OperatorDep) -> Response:
    holds = await run_in_threadpool(billing_of(request).open_holds)
    return render(request, "admin/holds.html", session=session, page="admin/holds", holds=holds)


@router.get("/{anything:path}")
async def console_admin_unknown(request: Request, session: OperatorDep, anything: str) -> Response:
    return error_page(request, 404, "Not found", "No such operator page.", session=session)
