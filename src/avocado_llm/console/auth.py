"""Console sign-in, sessions and CSRF protection.

- A console user signs in with a username and password (scrypt-hashed in the ledger; see
  ``billing.console_users``), never with an API key.
- The session cookie holds a random token (only its SHA-256 is stored); it is ``HttpOnly``,
  ``SameSite=Strict``, scoped to ``/console``, and ``Secure`` whenever the request came over
  TLS (behind a proxy: run uvicorn with ``--proxy-headers`` so the scheme is known).
- Every form carries a CSRF token: the session's (synchronizer token, stored with the
  session) once signed in; before sign-in, a random token that must equal a short-lived
  ``SameSite=Strict`` cookie (double submit). Every POST checks it, and refuses a foreign
  ``Origin`` too.
- Sign-in attempts are limited per username and per client address: each is counted in the
  ledger's database *before* the password is checked (see ``Billing.console_sign_in_counted``),
  so concurrent attempts, and attempts spread over several server processes, share one count.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from avocado_llm.billing import Billing
from avocado_llm.billing.console_users import ConsoleUserInfo
from avocado_llm.console.views import PREFIX, error_page, redirect

SESSION_COOKIE = "avocado_console"
LOGIN_COOKIE = "avocado_console_login"
SESSION_MAX_AGE_S = 12 * 3600
LOGIN_MAX_AGE_S = 3600
MAX_FORM_BYTES = 64_000
ATTEMPTS_ALLOWED = 10
"""Sign-in attempts per username in a window (a right password starts its count afresh)."""
ATTEMPTS_ALLOWED_PER_ADDRESS = 5 * ATTEMPTS_ALLOWED
"""Per client address: many people may share one behind a proxy."""
ATTEMPT_WINDOW = timedelta(minutes=5)


class Refused(Exception):
    """A console route's refusal, raised by its dependencies (:mod:`avocado_llm.console.deps`):
    ``response`` is sent instead of the page (a redirect to sign in, a 403 page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def send_refusal(request: Request, refusal: Exception) -> Response:
    """The app's handler for :class:`Refused` (registered by ``install_console``)."""
    assert isinstance(refusal, Refused)
    return refusal.response


@dataclass(frozen=True)
class Session:
    user: ConsoleUserInfo
    csrf: str
    token: str


class Form(dict[str, list[str]]):
    """A parsed ``application/x-www-form-urlencoded`` body."""

    def one(self, name: str, default: str = "") -> str:
        values = self.get(name)
        return values[0] if values else default


def billing_of(request: Request) -> Billing:
    return request.app.state.services.billing  # type: ignore[no-any-return]


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int, path: str = PREFIX
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response, name: str, path: str = PREFIX) -> None:
    response.delete_cookie(
        name,
        path=path,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


async def current_session(request: Request) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    found = await run_in_threadpool(billing_of(request).console_session, token)
    if found is None:
        return None
    user, csrf = found
    return Session(user, csrf, token)


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return redirect(f"{PREFIX}/login?next={quote(target, safe='/')}")


def safe_next(target: str, default: str) -> str:
    """Only a path inside the console (no open redirect to another site)."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


async def signed_in(request: Request) -> Session:
    """Whoever is signed in; else :class:`Refused` with a redirect to the sign-in page."""
    session = await current_session(request)
    if session is None:
        raise Refused(redirect(f"{PREFIX}/login"))
    return session


async def customer(request: Request) -> Session:
    """The signed-in customer; else :class:`Refused`: sign in first (and come back here) /
    operators go to their console."""
    session = await current_session(request)
    if session is None:
        raise Refused(_sign_in_redirect(request))
    if session.user.account_id is None:
        raise Refused(redirect(f"{PREFIX}/admin"))
    return session


async def operator(request: Request) -> Session:
    """The signed-in operator; else :class:`Refused`: sign in first / 403 for customers."""
    session = await current_session(request)
    if session is None:
        raise Refused(_sign_in_redirect(request))
    if not session.user.is_operator:
        raise Refused(
            error_page(
                request,
                403,
                "Operators only",
                "This page is for the service's operators; your sign-in is a customer's.",
                session=session,
            )
        )
    return session


def _origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def read_form(request: Request) -> Form | None:
    """The POSTed form, or None when it is not a small URL-encoded form."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    return Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))


async def checked_form(request: Request, session: Session) -> Form:
    """The form of a signed-in POST; :class:`Refused` (403) when its CSRF token or origin is
    wrong."""
    form = await read_form(request)
    if (
        form is None
        or not _origin_ok(request)
        or not hmac.compare_digest(form.one("csrf").encode(), session.csrf.encode())
    ):
        raise Refused(csrf_refused(request, session))
    return form


def csrf_refused(request: Request, session: Session | None = None) -> Response:
    return error_page(
        request,
        403,
        "Form refused",
        "This form was not sent from a page of this console (its CSRF token is missing or "
        "wrong), so nothing was changed. Reload the page and try again.",
        session=session,
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def login_token_ok(request: Request, form: Form) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.one("csrf")
    return (
        bool(cookie) and _origin_ok(request) and hmac.compare_digest(sent.encode(), cookie.encode())
    )


def attempt_limits(request: Request, username: str) -> dict[str, int]:
    """What a sign-in counts against: its username and its client address."""
    client = request.client.host if request.client else "-"
    return {f"user:{username}": ATTEMPTS_ALLOWED, f"ip:{client}": ATTEMPTS_ALLOWED_PER_ADDRESS}
