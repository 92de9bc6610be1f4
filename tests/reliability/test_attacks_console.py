"""Attacks on the web console of real ``avocado serve`` processes (two of them, on one
PostgreSQL ledger, in front of the fake upstream):

- a customer makes a key in the console with an empty form, or asks for more than the operator
  allowed: the key can never do more than the operator's own key for the account (max_tokens,
  models, requests per minute), checked through the API with the official ``openai`` client;
- 30 concurrent sign-ins for one user, spread over both servers, one login page's CSRF pair
  reused by all of them, the right password 26th: none signs in (the limit is 10);
- a just-created key never travels in a cookie, nor sits readable in the database.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from rel_helpers import (
    AVOCADO,
    MODEL,
    PRICE,
    SECRET,
    FakeUpstream,
    ServerProcess,
    free_port,
    running,
)
from sqlalchemy import text

from avocado_llm.billing import MICRO, Billing
from avocado_llm.testing.pgtemp import TempPostgres

PASSWORD = "a-long-console-password"
OTHER_MODEL = "another-model"
"""Priced, not served: an operator's key for globex may call only this one."""


@dataclass
class World:
    servers: list[ServerProcess]
    database_url: str

    def admin(self, *argv: str) -> str:
        """``avocado admin …`` (the real command); its output."""
        done = subprocess.run(
            [*AVOCADO, "admin", "--database-url", self.database_url, *argv],
            env={**os.environ, "AVOCADO_SECRET": SECRET}, capture_output=True, text=True,
            timeout=120, check=True,
        )  # fmt: skip
        return done.stdout


@pytest.fixture(scope="module")
def world(
    postgres: TempPostgres, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console-attacks")
    url = postgres.create_database("console_attacks")
    billing = Billing(url, SECRET)
    try:
        billing.migrate()
        billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
        billing.set_price(OTHER_MODEL, PRICE.input_per_1m, PRICE.output_per_1m, 0)
        for account in ("acme", "globex", "initech", "umbrella", "hooli"):
            billing.create_account(account, 10 * MICRO)
            billing.create_console_user(account, PASSWORD, account=account)
    finally:
        billing.close()
    servers = [
        ServerProcess(None, free_port(), upstream.url, url, root / f"server-{i}.log")
        for i in range(2)
    ]
    with running(servers):
        yield World(servers, url)
        for server in servers:
            server.stop()
    postgres.drop_database("console_attacks")


def _login_pair(client: httpx.Client) -> str:
    page = client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    return token[1]


def _signed_in(server: ServerProcess, username: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=60)
    data = {"csrf": _login_pair(client), "username": username, "password": PASSWORD}
    assert client.post("/console/login", data=data).status_code == 303
    return client


def _session_csrf(client: httpx.Client) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/keys").text)
    assert token
    return token[1]


def _console_key(client: httpx.Client, world: World, **form: str | list[str]) -> str:
    """Make a key on /console/keys (``form`` empty: a blank form); the key it shows once."""
    answer = client.post("/console/keys", data={"csrf": _session_csrf(client), **form})
    assert answer.status_code == 303, answer.text[:2000]
    cookies = " ".join(v for k, v in answer.headers.multi_items() if k.lower() == "set-cookie")
    assert "avk_" not in cookies  # never in a cookie
    with Billing(world.database_url, SECRET).engine.connect() as conn:
        waiting = conn.execute(text("SELECT sealed FROM console_flashes")).scalars().all()
    page = client.get("/console/keys").text
    shown = re.search(r'id="new-key-value">([^<]+)<', page)
    assert shown, page[:3000]
    key = shown[1].strip()
    # nor readable in the database on its way to the page
    assert waiting and all(key[4:] not in sealed for sealed in waiting)
    assert key not in client.get("/console/keys").text  # shown once
    return key


def _api(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, model: str = MODEL, max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )
    return answer.choices[0].message.content or ""


def test_a_console_key_never_gets_more_than_the_operators_key(world: World) -> None:
    server = world.servers[0]
    world.admin("keys", "create", "--account", "acme", "--rpm", "3", "--max-tokens", "16",
                "--models", MODEL)  # fmt: skip
    world.admin("keys", "create", "--account", "globex", "--models", OTHER_MODEL)
    acme = _signed_in(server, "acme")

    # asking for more than the operator allowed is refused, and says what the limit is
    for form, says in [
        ({"rpm": "1000"}, "at most 3"),
        ({"max_tokens": "200"}, "at most 16"),
        ({"models": [OTHER_MODEL]}, f"may call only {MODEL}"),
    ]:
        answer = acme.post("/console/keys", data={"csrf": _session_csrf(acme), **form})
        assert answer.status_code == 400 and says in answer.text, (form, answer.text[:2000])

    # a blank form: the operator's limits, enforced by the API
    client = _api(server, _console_key(acme, world))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _chat(client, max_tokens=200)
    with pytest.raises(openai.NotFoundError):
        _chat(client, model=OTHER_MODEL)
    answered = 0
    with pytest.raises(openai.RateLimitError):  # at most 3 a minute
        while answered <= 3:
            assert _chat(client)
            answered += 1
    assert 1 <= answered <= 3
    # a key that asks for less than the limits gets less
    tighter = _api(server, _console_key(acme, world, max_tokens="4"))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _chat(tighter, max_tokens=8)

    # globex's operator key may call only another model: so may its console keys
    globex = _signed_in(server, "globex")
    with pytest.raises(openai.NotFoundError):
        _chat(_api(server, _console_key(globex, world)))

    # an account the operator gave neither limits nor a key: no key from the console at all
    initech = _signed_in(server, "initech")
    answer = initech.post("/console/keys", data={"csrf": _session_csrf(initech)})
    assert answer.status_code == 400 and "has not set" in answer.text
    # until the operator sets limits; then a blank form gets exactly those
    out = world.admin("accounts", "limits", "initech", "--max-tokens", "32", "--rpm", "5")
    assert "max_tokens  32" in out
    initech_key = _api(server, _console_key(initech, world))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _chat(initech_key, max_tokens=33)
    assert _chat(initech_key, max_tokens=32)
    for c in (acme, globex, initech):
        c.close()


def test_concurrent_sign_ins_cannot_pass_the_limit(world: World) -> None:
    """30 at once for one user (limit 10), half on each server, one CSRF pair for all."""
    pairs = []
    for server in world.servers:
        with httpx.Client(base_url=server.url) as c:
            token = _login_pair(c)
            pairs.append((server.url, token, c.cookies["avocado_console_login"]))
    barrier = threading.Barrier(30)
    statuses: list[int] = [0] * 30
    sessions: list[bool] = [False] * 30

    def attempt(i: int) -> None:
        url, token, cookie = pairs[i % 2]
        password = PASSWORD if i == 25 else f"wrong-guess-{i:02d}"
        with httpx.Client(base_url=url, timeout=120) as c:
            barrier.wait()
            answer = c.post(
                "/console/login",
                data={"csrf": token, "username": "umbrella", "password": password},
                headers={"Cookie": f"avocado_console_login={cookie}"},
            )
        statuses[i] = answer.status_code
        sessions[i] = any(
            v.startswith("avocado_console=")
            for k, v in answer.headers.multi_items()
            if k.lower() == "set-cookie"
        )

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert 303 not in statuses and not any(sessions), statuses
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= 10, statuses  # at most 10 passwords were even checked
    # and the right password, alone, on either server, is still refused for now
    for url, token, cookie in pairs:
        with httpx.Client(base_url=url) as c:
            answer = c.post(
                "/console/login",
                data={"csrf": token, "username": "umbrella", "password": PASSWORD},
                headers={"Cookie": f"avocado_console_login={cookie}"},
            )
        assert answer.status_code == 429


def test_a_new_key_travels_in_no_cookie(world: World) -> None:
    """Shown once, on the page after the form, from the server's side: not in a Set-Cookie,
    not readable in the database meanwhile, not on a second look (see ``_console_key``)."""
    world.admin("keys", "create", "--account", "hooli", "--max-tokens", "8")
    hooli = _signed_in(world.servers[1], "hooli")
    key = _console_key(hooli, world)
    assert _chat(_api(world.servers[0], key))
    hooli.close()


def test_server_logs_hold_no_key(world: World) -> None:
    """Nothing key-like reached the servers' logs."""
    for server in world.servers:
        log = Path(server.log).read_text(errors="replace") if server.log.exists() else ""
        assert "avk_" not in log
