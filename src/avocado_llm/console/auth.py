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
- Sign-in failures are throttled per username and per client address.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
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
FAILURES_ALLOWED = 10
FAILURE_WINDOW_S = 300.0


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


async def customer(request: Request) -> Session | Response:
    """The signed-in customer, or a response: sign in first / operators go to their console."""
    session = await current_session(request)
    if session is None:
        return _sign_in_redirect(request)
    if session.user.account_id is None:
        return redirect(f"{PREFIX}/admin")
    return session


async def operator(request: Request) -> Session | Response:
    """The signed-in operator, or a response: sign in first / 403 for customers."""
    session = await current_session(request)
    if session is None:
        return _sign_in_redirect(request)
    if not session.user.is_operator:
        return error_page(
            request,
            403,
            "Operators only",
            "This page is for the service's operators; your sign-in is a customer's.",
            session=session,
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


async def checked_form(request: Request, session: Session) -> Form | Response:
    """The form of a signed-in POST, or 403 when its CSRF token or origin is wrong."""
    form = await read_form(request)
    if (
        form is None
        or not _origin_ok(request)
        or not hmac.compare_digest(form.one("csrf").encode(), session.csrf.encode())
    ):
        return csrf_refused(request, session)
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


class Throttle:
    """At most ``FAILURES_ALLOWED`` failed sign-ins per key in ``FAILURE_WINDOW_S``."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        """Whether any key is over its allowance (client addresses, ``ip:…``, get 5 times a
        username's: many people may share one address behind a proxy)."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                while times and now - times[0] > FAILURE_WINDOW_S:
                    times.popleft()
                allowed = FAILURES_ALLOWED * (5 if key.startswith("ip:") else 1)
                if times and len(times) >= allowed:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # bounded memory under a spray of usernames
                self._failures.clear()
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
