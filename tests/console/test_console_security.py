"""The console's defences, tried for real: names holding ``<script>`` are shown as text (in the
browser, nothing runs), forms without the CSRF token or from another origin change nothing,
a customer cannot reach another account's data by changing an id in the URL, operator pages
refuse customers, cookies carry the right flags, and console credentials are not API keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest
from console_helpers import EVIL_ACCOUNT, EVIL_MODEL, PASSWORDS, Console, shot
from playwright.sync_api import BrowserContext

from avocado_llm.billing import KeyInfo, Plan
from avocado_llm.cli import main as avocado

ADMIN_PAGES = ["/admin", "/admin/accounts", "/admin/keys", "/admin/prices", "/admin/holds"]


def _client(console: Console, username: str, password: str | None = None) -> httpx.Client:
    """An HTTP client signed in through the login form (with its CSRF token), like a browser."""
    client = httpx.Client(base_url=console.origin, follow_redirects=False)
    page = client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    answer = client.post(
        "/console/login",
        data={"csrf": token[1], "username": username, "password": password or PASSWORDS[username]},
    )
    assert answer.status_code == 303, answer.text
    return client


def _csrf(client: httpx.Client, path: str = "/console/keys") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found
    return found[1]


def test_script_in_account_and_model_names_is_shown_escaped(
    console: Console, context: BrowserContext
) -> None:
    billing = console.billing
    key_id, _ = billing.create_key(EVIL_ACCOUNT, models=[EVIL_MODEL])
    info = billing.account_info(EVIL_ACCOUNT)
    key = KeyInfo(key_id, info["id"], EVIL_ACCOUNT, (EVIL_MODEL,), None, None, Plan())
    hold = billing.hold(key, EVIL_MODEL, 12, 20, "req-evil-1")
    billing.settle(hold, 12, 7)

    page = console.sign_in(context, "evil")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    month = datetime.now(UTC).strftime("%Y-%m")
    for path in ["/", "/usage", "/keys", f"/statements?month={month}", "/prices"]:
        page.goto(console.url(path))
        page.wait_for_load_state("networkidle")
        assert page.evaluate("() => window.__pwned") is None, path
        body = page.inner_text("body")
        if path in ("/", "/keys", "/usage"):
            assert EVIL_ACCOUNT in body, path  # the account name, shown as text
        if path != "/keys" or EVIL_MODEL in body:
            assert "<script>window.__pwned=1</script>" in body, path  # the model name, as text
        html = page.content()
        assert "<script>window.__pwned" not in html, path  # never as markup
        assert "<img src=x" not in html, path
    # in the charts too: the label is the literal name
    page.goto(console.url("/usage"))
    labels = page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-tokens')).data.datasets"
        ".map(d => d.label)"
    )
    assert labels == [EVIL_MODEL]
    shot(page, "escaped-usage")
    assert not dialogs
    assert page.evaluate("() => window.__pwned") is None

    # and in the operator's pages
    ops = console.context()
    try:
        admin = console.sign_in(ops, "ops")
        for path in ["/admin/accounts", "/admin/keys", "/admin/prices"]:
            admin.goto(console.url(path))
            assert admin.evaluate("() => window.__pwned") is None
            assert "<script>window.__pwned" not in admin.content()
        admin.goto(console.url("/admin/accounts"))
        assert EVIL_ACCOUNT in admin.inner_text("#accounts")
        admin.goto(console.url("/admin/prices"))
        assert EVIL_MODEL in admin.inner_text("#prices")
    finally:
        ops.close()
    assert not console.problems, console.problems


def test_forms_without_the_csrf_token_are_refused(console: Console) -> None:
    billing = console.billing
    client = _client(console, "globex")
    account_id = billing.account_info("globex")["id"]
    before = len(billing.api_keys(account_id))

    # no token, a wrong token: 403, and no key was made
    assert client.post("/console/keys", data={"rpm": "5"}).status_code == 403
    assert client.post("/console/keys", data={"csrf": "forged", "rpm": "5"}).status_code == 403
    # a JSON body is not a form
    assert client.post("/console/keys", json={"csrf": _csrf(client)}).status_code == 403
    # the right token from another site's page (Origin): refused too
    token = _csrf(client)
    foreign = client.post(
        "/console/keys", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert len(billing.api_keys(account_id)) == before

    # revoke without the token: the key stays active
    key_id, _ = billing.create_key("globex")
    assert client.post(f"/console/keys/{key_id}/revoke").status_code == 403
    assert next(k for k in billing.api_keys(account_id) if k["id"] == key_id)["state"] == "active"
    # sign-out without it: still signed in
    assert client.post("/console/logout").status_code == 403
    assert client.get("/console/").status_code == 200

    # operator forms: a top-up without the token moves no money
    ops = _client(console, "ops")
    balance = billing.balance("globex")
    refused = ops.post(
        "/console/admin/topups", data={"account": "globex", "amount": "100", "reason": "x"}
    )
    assert refused.status_code == 403
    assert billing.balance("globex") == balance
    price_form = {"model": "m", "input_per_1m": "0", "output_per_1m": "0"}
    assert ops.post("/console/admin/prices", data=price_form).status_code == 403
    assert billing.price("m") is None
    assert ops.post(f"/console/admin/keys/{key_id}/revoke").status_code == 403
    assert next(k for k in billing.api_keys(account_id) if k["id"] == key_id)["state"] == "active"

    # the sign-in form has its own token (login CSRF): without it, no session
    fresh = httpx.Client(base_url=console.origin)
    answer = fresh.post(
        "/console/login", data={"username": "globex", "password": PASSWORDS["globex"]}
    )
    assert answer.status_code == 403
    assert "avocado_console" not in fresh.cookies
    # with the right token, the same form works
    token = _csrf(client)
    created = client.post("/console/keys", data={"csrf": token, "rpm": "5"})
    assert created.status_code == 303
    assert len(billing.api_keys(account_id)) == before + 2
    for c in (client, ops, fresh):
        c.close()


def test_a_customer_cannot_reach_another_accounts_data(console: Console) -> None:
    billing = console.billing
    acme_id = billing.account_info("acme")["id"]
    victim_key_id, victim_key = billing.create_key("acme")
    globex = _client(console, "globex")
    token = _csrf(globex)

    # revoke acme's key by its id, from globex's session (with a valid token): not found
    answer = globex.post(f"/console/keys/{victim_key_id}/revoke", data={"csrf": token})
    assert answer.status_code == 404
    acme_keys = {k["id"]: k for k in billing.api_keys(acme_id)}
    assert acme_keys[victim_key_id]["state"] == "active"
    # nor see it listed
    assert victim_key_id not in globex.get("/console/keys").text
    # query parameters naming another account change nothing: the session decides
    month = datetime.now(UTC).strftime("%Y-%m")
    for path in [
        f"/console/statements/{month}.json?account=acme",
        f"/console/statements/{month}.json?account_id={acme_id}",
    ]:
        statement = globex.get(path).json()
        assert statement["account"] == "globex"
    usage = globex.get(f"/console/usage.csv?account=acme&account_id={acme_id}")
    assert usage.text == globex.get("/console/usage.csv").text
    assert "globex" in usage.headers["content-disposition"]
    assert "acme" not in globex.get("/console/?account=acme").text
    # the operator pages that do list every account refuse a customer (403), whatever the id
    for path in [*ADMIN_PAGES, f"/admin/accounts/{acme_id}", "/admin/keys?account=acme"]:
        assert globex.get(f"/console{path}").status_code == 403, path
    # nor revoke acme's key through the operator's form (with globex's valid token)
    answer = globex.post(f"/console/admin/keys/{victim_key_id}/revoke", data={"csrf": token})
    assert answer.status_code == 403
    assert {k["id"]: k for k in billing.api_keys(acme_id)}[victim_key_id]["state"] == "active"
    # a just-created key flashed to another session's cookie is not shown to globex
    globex.cookies.set("avocado_console_new_key", f"{victim_key_id}:{victim_key}",
                       path="/console/keys")  # fmt: skip
    assert victim_key not in globex.get("/console/keys").text
    globex.close()


def test_operator_pages_refuse_customer_sessions(console: Console, context: BrowserContext) -> None:
    page = console.sign_in(context, "acme")
    for path in ADMIN_PAGES:
        response = page.goto(console.url(path))
        assert response is not None and response.status == 403, path
        assert "Operators only" in page.inner_text("main")
    shot(page, "admin-refused")
    console.problems[:] = [p for p in console.problems if "403 (Forbidden)" not in p]
    missing = page.goto(console.url("/no-such-page"))
    assert missing is not None and missing.status == 404
    assert "There is no such console page" in page.inner_text("main")
    console.problems[:] = [p for p in console.problems if "404 (Not Found)" not in p]
    # and without any session, every console page sends you to sign in
    anonymous = httpx.Client(base_url=console.origin)
    for path in ["/", "/usage", "/keys", "/statements", "/prices", *ADMIN_PAGES]:
        answer = anonymous.get(f"/console{path}")
        assert answer.status_code == 303 and "/console/login" in answer.headers["location"], path
    anonymous.close()


def test_session_cookie_flags_and_headers(console: Console) -> None:
    plain = httpx.Client(base_url=console.origin)
    page = plain.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    answer = plain.post(
        "/console/login",
        data={"csrf": csrf[1], "username": "acme", "password": PASSWORDS["acme"]},
    )
    cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and "avocado_console=" in v
    )
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    assert "secure" not in flags  # plain HTTP on loopback
    headers = plain.get("/console/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"

    # behind a TLS-terminating proxy on loopback (uvicorn trusts X-Forwarded-Proto from it)
    tls = httpx.Client(base_url=console.origin, headers={"X-Forwarded-Proto": "https"})
    page = tls.get("/console/login")
    login_cookie = page.headers["set-cookie"]
    assert "secure" in login_cookie.lower()
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    answer = tls.post(
        "/console/login",
        data={"csrf": token[1], "username": "acme", "password": PASSWORDS["acme"]},
        headers={"Cookie": f"avocado_console_login={token[1]}"},  # a Secure cookie: by hand
    )
    session_cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and "avocado_console=" in v
    )
    assert "secure" in {p.strip().lower() for p in session_cookie.split(";")}
    for c in (plain, tls):
        c.close()


def test_wrong_passwords_and_api_keys_do_not_sign_in(console: Console) -> None:
    _, api_key = console.billing.create_key("acme")
    client = httpx.Client(base_url=console.origin)
    for username, password in [("acme", "wrong-password-123"), ("nobody", "whatever-123456"),
                               ("acme", api_key)]:  # fmt: skip
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text)
        assert token
        answer = client.post(
            "/console/login",
            data={"csrf": token[1], "username": username, "password": password},
        )
        assert answer.status_code == 401
        assert "Wrong username or password" in answer.text
        assert "avocado_console" not in client.cookies
    # an API key as a bearer token does not open the console either
    assert client.get(
        "/console/", headers={"Authorization": f"Bearer {api_key}"}
    ).status_code == 303  # fmt: skip
    client.close()


def test_admin_cli_creates_console_users(
    console: Console, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = console.database_url
    console.billing.create_account("hooli", 1_000_000)
    capsys.readouterr()
    assert avocado(["admin", "--database-url", url, "console-user", "create",
                    "--account", "hooli"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    password = re.search(r"^password: (\S+)$", out, re.MULTILINE)
    assert password, out
    client = _client(console, "hooli", password[1])
    assert "hooli" in client.get("/console/").text
    client.close()

    monkeypatch.setenv("OPS2_PASSWORD", "a-long-operator-password")
    assert avocado(["admin", "--database-url", url, "console-user", "create", "--operator",
                    "--username", "ops2", "--password-env", "OPS2_PASSWORD"]) == 0  # fmt: skip
    assert "password:" not in capsys.readouterr().out  # not echoed when it came from the env
    ops = _client(console, "ops2", "a-long-operator-password")
    assert ops.get("/console/admin").status_code == 200
    # disabled: the session ends, the password no longer works
    assert avocado(["admin", "--database-url", url, "console-user", "disable", "ops2"]) == 0
    assert ops.get("/console/admin").status_code == 303
    ops.close()
    # a customer needs an account; duplicates are refused
    assert avocado(["admin", "--database-url", url, "console-user", "create"]) == 1
    assert avocado(["admin", "--database-url", url, "console-user", "create",
                    "--account", "hooli"]) == 1  # fmt: skip


def test_repeated_failed_sign_ins_are_throttled(console: Console) -> None:
    console.billing.create_account("umbrella", 1_000_000)
    console.billing.create_console_user("umbrella", "umbrella-password", account="umbrella")
    client = httpx.Client(base_url=console.origin)

    def attempt(password: str) -> int:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text)
        assert token
        data = {"csrf": token[1], "username": "umbrella", "password": password}
        return client.post("/console/login", data=data).status_code

    assert [attempt(f"guess-number-{i}") for i in range(10)] == [401] * 10
    assert attempt("umbrella-password") == 429  # even the right one, for a while
    assert "avocado_console" not in client.cookies
    client.close()


def test_a_new_key_is_shown_once_to_the_session_that_made_it(console: Console) -> None:
    """It waits server-side (never in a cookie) for the next page of the very session that
    made it; another session of the same user does not see it, nor a second look."""
    maker, other = _client(console, "globex"), _client(console, "globex")
    answer = maker.post("/console/keys", data={"csrf": _csrf(maker), "tpm": "777"})
    assert answer.status_code == 303
    set_cookies = [v for k, v in answer.headers.multi_items() if k.lower() == "set-cookie"]
    assert not any("avk_" in v for v in set_cookies), set_cookies
    assert "new-key-value" not in other.get("/console/keys").text
    shown = re.search(r'id="new-key-value">([^<]+)<', maker.get("/console/keys").text)
    assert shown and console.billing.authenticate(shown[1].strip()) is not None
    assert shown[1].strip() not in maker.get("/console/keys").text
    for c in (maker, other):
        c.close()


def test_a_right_password_over_the_limit_is_refused(console: Console) -> None:
    """Attempts are counted before the password is checked: the 11th is refused unchecked, and
    a success starts the username's count afresh."""
    console.billing.create_account("initrode", 1_000_000)
    console.billing.create_console_user("initrode", "initrode-password", account="initrode")
    client = httpx.Client(base_url=console.origin)

    def attempt(password: str) -> int:
        data = {"csrf": _csrf(client, "/console/login"), "username": "initrode",
                "password": password}  # fmt: skip
        return client.post("/console/login", data=data).status_code

    assert [attempt(f"guess-{i}") for i in range(9)] == [401] * 9
    assert attempt("initrode-password") == 303  # the 10th: within the limit
    client.cookies.clear()
    assert [attempt(f"guess-{i}") for i in range(10)] == [401] * 10  # counted afresh
    assert attempt("initrode-password") == 429
    client.close()
