"""The customer console: sign-in, overview, usage, keys, statements, prices (usage and
statements: :mod:`avocado_llm.console.customer_reports`).

Every page is scoped to the signed-in user's account (taken from the session, never from the
URL); an id in a URL (a key to revoke) is looked up *within* that account, so another
account's id is simply not found.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from avocado_llm.billing.key_limits import KeyRequest
from avocado_llm.billing.statements import month_bounds
from avocado_llm.console import auth, customer_reports
from avocado_llm.console.auth import Session, billing_of
from avocado_llm.console.deps import CustomerDep, CustomerFormDep, SignedInDep, SignedInFormDep
from avocado_llm.console.views import PREFIX, error_page, redirect, render

router = APIRouter()
MAX_KEY_DAYS = 36_500


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


# --- usage and statements: their own module, included here (before the catch-all below) ----

router.include_router(customer_reports.router)


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
