"""Attacks on a real ``avocado serve`` process: SQL injection and oversized strings in the
Authorization header, the model name and every text field; keys one character off; revoked,
expired, restricted and other accounts' keys; keys in the URL; admin operations without admin
rights; every route without a key; and, at the end, nothing secret in the server's log.

(LiteLLM's CVE-2026-42208 was an SQL injection through ``Authorization``; vLLM served
inference on ``/invocations`` with no key: these are the tests that catch such bugs.)
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from rel_helpers import MODEL, SECRET, Gateway
from sqlalchemy import func, select

from avocado_llm.billing import Billing
from avocado_llm.billing.schema import Account, ApiKey, HoldRow, ModelPrice, UsageEvent

INJECTIONS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "avk_' OR '1'='1' --",
    "'; DROP TABLE api_keys; --",
    '" OR ""="',
    "avk_x' UNION SELECT id, hmac FROM api_keys --",
    "1; UPDATE accounts SET balance = 999999999999 --",
    "%' OR hmac LIKE '%",
    "\\'; SELECT pg_sleep(5); --",
    "avk_" + "A" * 10_000,
]
"""Each one as a key, a model name, a message, a user, a stop string and a tool call id."""


def chat(gateway: Gateway, headers: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=payload | body, headers=headers, timeout=30
    )


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """OpenAI's error envelope with a non-empty message."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def ledger_snapshot(gateway: Gateway) -> dict[str, Any]:
    """What an injection would change: tables' sizes, balances, prices."""
    billing = Billing(gateway.database_url, SECRET)
    try:
        with billing.engine.connect() as conn:
            return {
                "accounts": conn.execute(
                    select(Account.name, Account.balance, Account.held).order_by(Account.name)
                ).all(),
                "keys": conn.execute(
                    select(ApiKey.id, ApiKey.revoked_at).order_by(ApiKey.id)
                ).all(),
                "prices": conn.execute(select(ModelPrice.model, ModelPrice.input_per_1m)).all(),
                "events": conn.scalar(select(func.count()).select_from(UsageEvent)),
                "holds": conn.scalar(select(func.count()).select_from(HoldRow)),
            }
    finally:
        billing.close()


def assert_serves(gateway: Gateway) -> None:
    """The server still answers a paying key."""
    response = chat(gateway, gateway.headers())
    assert response.status_code == 200, response.text[:500]


def test_sql_injection_and_oversized_keys_in_authorization_get_401(gateway: Gateway) -> None:
    before = ledger_snapshot(gateway)
    for payload in INJECTIONS:
        for header in (f"Bearer {payload}", payload, f"Bearer {gateway.key}{payload}"):
            assert_envelope(chat(gateway, {"Authorization": header}), 401)
    huge = {"Authorization": "Bearer avk_" + "B" * 200_000}  # beyond the HTTP layer's limit
    try:
        response = chat(gateway, huge)
        assert 400 <= response.status_code < 500, response.status_code
    except (httpx.ReadError, httpx.RemoteProtocolError):
        pass  # uvicorn drops a connection whose headers are too large: refused, never served
    assert ledger_snapshot(gateway) == before
    assert_serves(gateway)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_in_the_model_name_and_every_text_field(gateway: Gateway, payload: str) -> None:
    before = ledger_snapshot(gateway)
    error = assert_envelope(chat(gateway, gateway.headers(), model=payload), 404)
    assert error["code"] == "model_not_found"
    path = f"{gateway.url}/v1/models/{payload}"
    models = httpx.get(path, headers=gateway.headers(), timeout=30)
    assert models.status_code == 404, models.text[:300]  # (or an unknown path: also 404)
    fields: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": payload}]},
        {"messages": [{"role": "system", "content": payload}, {"role": "user", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": payload}]}]},
        {"messages": [{"role": "user", "content": "x", "name": payload}]},
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": payload}]},
        {"user": payload},
        {"stop": payload},
        {"stop": [payload, payload[:3] or "x"]},
    ]
    answered = 0
    for body in fields:
        response = chat(gateway, gateway.headers(), **body)
        assert response.status_code in (200, 400), response.text[:500]
        if response.status_code == 400:  # too long for the prompt cap or a stop string's: says so
            error = assert_envelope(response, 400)
            assert error["code"] == "context_length_exceeded" or error["param"] == "stop"
        answered += response.status_code == 200
    completion = httpx.post(
        f"{gateway.url}/v1/completions",
        json={"model": MODEL, "prompt": [payload, "x"], "max_tokens": 3, "user": payload},
        headers=gateway.headers(),
        timeout=30,
    )
    assert completion.status_code in (200, 400), completion.text[:500]
    answered += completion.status_code == 200
    after = ledger_snapshot(gateway)
    assert after["keys"] == before["keys"] and after["prices"] == before["prices"]
    assert [a.name for a in after["accounts"]] == [a.name for a in before["accounts"]]
    assert after["events"] == before["events"] + answered  # each answer charged, once
    assert_serves(gateway)


def one_off(key: str) -> list[str]:
    """Keys that differ from ``key`` in exactly one character (first, middle and last of its
    secret part), one character longer, and one shorter."""
    out = []
    for i in (4, 5, len(key) // 2, len(key) - 1):
        c = "A" if key[i] != "A" else "B"
        out.append(key[:i] + c + key[i + 1 :])
    return [*out, key + "A", key[:-1], key.upper(), "avk-" + key[4:]]


def test_keys_that_differ_in_one_character_get_401(gateway: Gateway) -> None:
    for near in one_off(gateway.key):
        gateway.used.append(near)
        error = assert_envelope(chat(gateway, gateway.headers(near)), 401)
        assert error["code"] == "invalid_api_key"
    assert_serves(gateway)


def test_revoked_expired_and_restricted_keys(gateway: Gateway) -> None:
    before = gateway.balance()
    for key in (gateway.revoked_key, gateway.expired_key):
        assert_envelope(chat(gateway, gateway.headers(key)), 401)
        models = httpx.get(f"{gateway.url}/v1/models", headers=gateway.headers(key), timeout=30)
        assert_envelope(models, 401)
    error = assert_envelope(chat(gateway, gateway.headers(gateway.restricted_key)), 404)
    assert error["code"] == "model_not_found"
    listed = httpx.get(
        f"{gateway.url}/v1/models", headers=gateway.headers(gateway.restricted_key), timeout=30
    )
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert gateway.balance() == before


def test_another_accounts_key_spends_only_its_own_credit_and_sees_no_stored_answer(
    gateway: Gateway,
) -> None:
    """The same Idempotency-Key and body from another account's key is another request: it
    must not replay the first account's stored answer, and it is charged to its own account."""
    idem = {"Idempotency-Key": "shared-key-1"}
    acme_before, globex_before = gateway.balance("acme"), gateway.balance("globex")
    first = chat(gateway, gateway.headers() | idem)
    assert first.status_code == 200
    acme_after = gateway.balance("acme")
    second = chat(gateway, gateway.headers(gateway.other_key) | idem)
    assert second.status_code == 200
    assert second.headers.get("idempotent-replayed") is None
    assert second.json()["id"] != first.json()["id"]
    assert acme_after < acme_before and gateway.balance("acme") == acme_after
    assert gateway.balance("globex") < globex_before


@pytest.mark.parametrize("name", ["api_key", "key", "token", "access_token", "apikey", "x"])
def test_a_key_in_the_query_string_is_refused(gateway: Gateway, name: str) -> None:
    before = gateway.balance()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        params={name: gateway.key},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=gateway.headers(),  # even with the right header as well
        timeout=30,
    )
    error = assert_envelope(response, 401)
    assert "not accepted in the URL" in error["message"]
    get = httpx.get(f"{gateway.url}/v1/models", params={name: gateway.key}, timeout=30)
    assert_envelope(get, 401)
    assert gateway.balance() == before


ADMIN_PROBES = [
    ("GET", "/admin"),
    ("GET", "/v1/admin"),
    ("POST", "/v1/accounts"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/credits"),
    ("GET", "/v1/usage"),
    ("GET", "/console/admin"),
    ("GET", "/console/admin/accounts"),
    ("GET", "/console/admin/keys"),
    ("GET", "/console/admin/holds"),
    ("POST", "/console/admin/topups"),
    ("POST", "/console/admin/prices"),
]


@pytest.mark.parametrize("with_key", [False, True])
def test_admin_operations_need_admin_rights(gateway: Gateway, with_key: bool) -> None:
    """The HTTP API has no admin operation (``avocado admin`` acts on the database); an API key
    is no admin login either: nothing that manages accounts, credit, keys or prices answers."""
    before = ledger_snapshot(gateway)
    headers = gateway.headers() if with_key else {}
    form = {"account": "acme", "amount": "1000", "model": MODEL, "input": "0", "output": "0"}
    for method, path in ADMIN_PROBES:
        response = httpx.request(
            method, gateway.url + path, headers=headers, data=form if method == "POST" else None,
            follow_redirects=False, timeout=30,
        )  # fmt: skip
        sign_in = method == "GET" and 'type="password"' in response.text  # a login form
        ok = 200 <= response.status_code < 300
        assert not ok or sign_in, f"{method} {path}: {response.status_code}"
        assert response.status_code < 500, f"{method} {path}: {response.text[:300]}"
        assert "globex" not in response.text  # no account data leaks
    assert ledger_snapshot(gateway) == before


def test_every_route_needs_a_key_except_health_metrics_and_docs(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=30)
    assert spec.status_code == 200
    public = {"/health", "/metrics"}
    operations = [
        (method.upper(), path) for path, ops in spec.json()["paths"].items() for method in ops
    ]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= {p for _, p in operations}
    for method, path in operations:
        concrete = path.replace("{model}", MODEL)
        response = httpx.request(method, gateway.url + concrete, timeout=30)
        if path in public:
            assert response.status_code == 200, path
            assert "avk_" not in response.text and "acme" not in response.text
        else:
            error = assert_envelope(response, 401)
            assert "API key" in error["message"], path
    undocumented = [
        ("POST", "/invocations"),  # vLLM's SageMaker route, once served without a key
        ("POST", "/v1/embeddings"),
        ("POST", "/tokenize"),
        ("GET", "/v1/engines"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("POST", "/v1/chat/completions/"),
        ("GET", "/V1/models"),
        ("GET", "//v1/models"),
        ("GET", "/v1/models/../../health/../v1/models"),
        ("POST", "/v1//chat/completions"),
    ]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for method, path in undocumented:
        response = httpx.request(
            method, gateway.url + path, json=body if method == "POST" else None, timeout=30
        )
        if response.status_code == 307:  # a trailing slash: redirected, never answered
            assert response.headers["location"].endswith(path.rstrip("/")), path
            continue
        assert response.status_code in (401, 404, 405), f"{method} {path}: {response.status_code}"
        assert "choices" not in response.text


def test_nothing_secret_in_the_logs(gateway: Gateway) -> None:
    """Runs last in this module: every key sent so far (good, bad, revoked, in URLs) is absent
    from the server's log, which does show the requests (by key id)."""
    assert_serves(gateway)  # (so that the log has a request to show, even run alone)
    httpx.get(f"{gateway.url}/v1/models", params={"api_key": gateway.key}, timeout=30)
    log = gateway.log.read_text(errors="replace")
    assert "/v1/chat/completions 200" in log and "key=key_" in log  # the access log is on
    for key in gateway.used:
        secret = key[8:] if key.startswith("avk_") else key
        if len(secret) >= 12:
            assert secret not in log, f"a key ({key[:8]}…) is in the server's log"
    assert SECRET not in log
