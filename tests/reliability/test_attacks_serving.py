"""Attacks on a real ``avocado serve`` process from issue #18 (serving side): a lying upstream
(its usage negative, missing, zero, absurd), an upstream whose error text names internal
hosts, forged lines in the access log, and cheap stalls by keys with no credit or over their
rate limit (prompts rendered and tokenized before anything else was checked).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_upstream import lie
from rel_helpers import (
    MODEL,
    PRICE,
    SECRET,
    FakeUpstream,
    Gateway,
    ServerProcess,
    free_port,
    prepare_ledger,
    running,
)

from avocado_llm.billing import MICRO, Billing, charge_for

CHAT = "/v1/chat/completions"
ALLOWANCE = 16  # the gateway's per-message template allowance when it has no tokenizer


def gateway_prompt_tokens(content: str) -> int:
    """What the gateway (no tokenizer) counts for one user message."""
    return len(content.encode()) + ALLOWANCE * 2


def ledger(gateway: Gateway) -> Billing:
    return Billing(gateway.database_url, SECRET)


def last_event(gateway: Gateway) -> dict[str, Any] | None:
    billing = ledger(gateway)
    try:
        events = billing.usage("acme", limit=1)
        return events[0] if events else None
    finally:
        billing.close()


def held(gateway: Gateway) -> int:
    billing = ledger(gateway)
    try:
        return int(billing.account_info("acme")["held"])
    finally:
        billing.close()


def stream_chat(gateway: Gateway, content: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of the chunks a streaming client receives, and its error events."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "stream": True}  # fmt: skip
    texts, errors = [], []
    with httpx.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers(),
                      timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event["error"])
            for choice in event.get("choices") or []:
                if choice["delta"].get("content"):
                    texts.append(choice["delta"]["content"])
    return texts, errors


LIES = {
    "negative": {"prompt_tokens": 5, "completion_tokens": -1000, "total_tokens": -995},
    "missing prompt_tokens": {"completion_tokens": 3, "total_tokens": 3},
    "zero": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    "10^12 prompt tokens": {"prompt_tokens": 10**12, "completion_tokens": 3},
    "more than max_tokens": {"prompt_tokens": 5, "completion_tokens": 10**6},
    "text for numbers": {"prompt_tokens": "5", "completion_tokens": "3"},
    "not an object": [5, 3],
    "none at all": None,
}


@pytest.mark.parametrize("name", list(LIES))
def test_a_lying_upstream_usage_is_a_502_and_never_an_unbilled_answer(
    gateway: Gateway, name: str
) -> None:
    """Non-streamed: a 502 (the client gets no text), nothing charged, no hold left open.
    Streamed: the text already passed on is billed as the gateway counted it (its prompt
    count, one token per chunk of text), the stream ends with an error event, no hold open."""
    directive = "usage=none" if LIES[name] is None else f"usage={json.dumps(LIES[name])}"
    content = lie(f"lying usage {name}", directive)
    before = gateway.balance()
    event_before = last_event(gateway)
    response = httpx.post(
        gateway.url + CHAT,
        json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8},
        headers=gateway.headers(),
        timeout=30,
    )
    assert response.status_code == 502, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "upstream_error"
    assert held(gateway) == 0
    assert gateway.balance() == before and last_event(gateway) == event_before

    texts, errors = stream_chat(gateway, content)
    assert texts and len(errors) == 1 and errors[0]["code"] == "upstream_error"
    assert held(gateway) == 0
    event = last_event(gateway)
    assert event is not None and event != event_before
    prompt = gateway_prompt_tokens(content)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (prompt, len(texts))
    assert before - gateway.balance() == charge_for(PRICE, prompt, len(texts)) > 0


def test_an_honest_upstream_usage_is_still_what_is_billed(gateway: Gateway) -> None:
    before = gateway.balance()
    texts, errors = stream_chat(gateway, "an honest question")
    assert texts and not errors
    event = last_event(gateway)
    assert event is not None and event["status"] == "ok"
    assert event["completion_tokens"] == len(texts)  # the fake's truth: one token per chunk
    assert event["prompt_tokens"] == 1 + len(b"an honest question") // 4  # its count, not ours
    assert before - gateway.balance() == event["charge"]


@pytest.mark.parametrize(
    ("directive", "status"),
    [
        ("status=500:{}", 502),
        ("status=503:{}", 502),
        ("status=400:{}", 400),
        ("status=404:{}", 400),
        ("midstream={}", 502),
    ],
)
def test_upstream_error_text_never_reaches_the_client(
    gateway: Gateway, directive: str, status: int
) -> None:
    """The upstream's own words (here naming an internal model and host) are logged, and the
    client gets a generic message in OpenAI's envelope, streamed or not."""
    secret = "model: secret-llama-70b-internal at 10.1.2.3"
    content = lie("please fail", directive.format(secret))
    before = gateway.balance()
    response = httpx.post(
        gateway.url + CHAT,
        json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8},
        headers=gateway.headers(),
        timeout=30,
    )
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "secret-llama" not in response.text and "10.1.2.3" not in response.text
    assert "reference" in error["message"]
    ref = error["message"].split("reference ")[1][:12]
    log = gateway.log.read_text(errors="replace")
    assert ref in log and "secret-llama-70b-internal" in log  # the operator can find it
    assert held(gateway) == 0 and gateway.balance() == before
    if status == 502:
        _, errors = stream_chat(gateway, content)
        assert len(errors) == 1 and "secret-llama" not in json.dumps(errors)
        assert "10.1.2.3" not in json.dumps(errors)
    assert held(gateway) == 0


FORGED = "2099-01-01 00:00:00,000 avocado.serve.access GET /v1/chat/completions 200 1.0ms"


SEPARATORS = ["%0A", "%0D", "%0D%0A", "%E2%80%A8", "%C2%85", "%1B[2K%0D", "%00", "%20", "%09"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_path_cannot_forge_an_access_log_line(gateway: Gateway, separator: str) -> None:
    """``/v1/models/x<newline><a whole fake line naming another key>``: the access log writes
    the path escaped, one line per request, its fields where they belong."""
    marker = f"forged{SEPARATORS.index(separator)}x"
    fake = FORGED.replace(" ", "%20") + f"%20key=key_{marker}"
    response = httpx.get(f"{gateway.url}/v1/models/x{separator}{fake}", timeout=30)
    assert response.status_code in (400, 401, 404), response.text[:300]
    time.sleep(0.2)  # the access line is written once the answer is sent
    lines = gateway.log.read_text(errors="replace").splitlines()
    ours = [line for line in lines if marker in line]
    assert len(ours) == 1, ours  # one line, not two
    [line] = ours
    fields = line.split(" ")
    assert fields[2] == "avocado.serve.access" and fields[3] == "GET", line
    assert len(fields) == 8 and fields[-1] == "key=-", line  # nobody else's key id
    assert all(ch.isprintable() for ch in line), repr(line)
    assert not any(line.startswith("2099-") for line in lines)


# --- cheap stalls (#18.6): a gateway with a tokenizer, a zero-credit key, a slow key ---------


@pytest.fixture(scope="module")
def tokenizing_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path
) -> Iterator[dict[str, Any]]:
    """A gateway that renders and tokenizes prompts (``AVOCADO_MODEL_DIR``: qwen-tiny's
    tokenizer), with the default 1 MB body cap and prompts of at most 255 tokens; a key with
    no credit ("broke"), a paying key ("paid"), and a paying key limited to 2 requests a
    minute ("slow")."""
    root = tmp_path_factory.mktemp("tokenizing")
    url = f"sqlite:///{root / 'ledger.db'}"
    broke = prepare_ledger(url, 0)
    billing = Billing(url, SECRET)
    try:
        billing.create_account("globex", 10 * MICRO)
        paid = billing.create_key("globex")[1]
        slow = billing.create_key("globex", rpm=2)[1]
    finally:
        billing.close()
    env = {"AVOCADO_MODEL_DIR": str(zoo_dir / "qwen-tiny"), "AVOCADO_MAX_PROMPT_TOKENS": "256"}
    server = ServerProcess(None, free_port(), upstream.url, url, root / "server.log",
                           extra_env=env)  # fmt: skip
    with running([server]):
        yield {"url": server.url, "broke": broke, "paid": paid, "slow": slow, "ledger": url}
        server.stop()


def post_chat(url: str, key: str, content: str) -> httpx.Response:
    return httpx.post(
        url + CHAT,
        json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def test_a_key_without_credit_cannot_stall_the_server(tokenizing_gateway: dict[str, Any]) -> None:
    """Eight ~900 KB conversations at once from a key with no credit, then eight that would
    need tokenizing to know they are too long: each is refused before its prompt is tokenized
    (a 400 from the character bound, a 429 ``insufficient_quota``), nothing is charged, and
    /health answers all along (its latency is printed: timings are no assertion here)."""
    gw = tokenizing_gateway
    huge, long = "word " * 180_000, "word " * 2_400  # 900,000 and 12,000 characters
    latencies: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert httpx.get(gw["url"] + "/health", timeout=60).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    poller.start()
    results: list[httpx.Response] = []
    try:
        for content in (huge, long):
            threads = [
                threading.Thread(target=lambda c=content: results.append(
                    post_chat(gw["url"], gw["broke"], c)))
                for _ in range(8)
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        stop.set()
        poller.join()
    huge_answers, long_answers = results[:8], results[8:]
    for response in huge_answers:
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
    for response in long_answers:
        assert response.status_code == 429, response.text[:300]
        assert response.json()["error"]["code"] == "insufficient_quota"
    # /health answered all along; its latency is a figure, not an assertion (a shared CPU's
    # timing is no outcome): the refusals above, by the character bound and the credit check,
    # are what proves no prompt was tokenized
    assert latencies, "/health never answered during the attack"
    print(f"/health during the attack: {len(latencies)} answers, max {max(latencies):.3f} s")
    billing = Billing(gw["ledger"], SECRET)
    try:
        assert billing.usage("acme") == [] and billing.account_info("acme")["held"] == 0
    finally:
        billing.close()
    # a paying key still gets the exact count for a prompt it had to tokenize, and answers
    exact = post_chat(gw["url"], gw["paid"], long)
    assert exact.status_code == 400 and "tokens" in exact.json()["error"]["message"]
    assert post_chat(gw["url"], gw["paid"], "hi").status_code == 200


def test_the_rate_limit_comes_before_the_prompt_is_tokenized(
    tokenizing_gateway: dict[str, Any],
) -> None:
    """A key limited to 2 requests a minute: its third request is refused by the limit
    (429, ``rate_limit_exceeded``) before its prompt is looked at, even one too long for the
    context (which only tokenizing can tell)."""
    gw = tokenizing_gateway
    assert post_chat(gw["url"], gw["slow"], "hi").status_code == 200
    assert post_chat(gw["url"], gw["slow"], "hi").status_code == 200
    refused = post_chat(gw["url"], gw["slow"], "word " * 2_400)
    assert refused.status_code == 429, refused.text[:300]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in refused.headers
