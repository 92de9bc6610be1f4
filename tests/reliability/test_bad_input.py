"""Bad input to a real ``avocado serve`` process: every malformed request gets a 4xx in
OpenAI's error envelope whose message says what to fix, costs nothing, and the server keeps
serving. The gateway's caps: 64 KiB bodies, prompts of at most 255 tokens, plan max_tokens 64."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from rel_helpers import MODEL, Gateway

CHAT = "/v1/chat/completions"
GOOD: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def post(gateway: Gateway, content: bytes, path: str = CHAT, **headers: str) -> httpx.Response:
    return httpx.post(
        gateway.url + path,
        content=content,
        headers=gateway.headers() | {"Content-Type": "application/json", **headers},
        timeout=30,
    )


def assert_refused(response: httpx.Response, status: int, *hints: str) -> dict[str, Any]:
    """``status`` with OpenAI's envelope, and a message containing every hint."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    for hint in hints:
        assert hint.lower() in error["message"].lower(), error["message"]
    assert "None" not in error["message"] and "Traceback" not in error["message"]
    return error  # type: ignore[no-any-return]


@pytest.fixture
def unchanged(gateway: Gateway) -> Any:
    """After the test: nothing charged, and the server still answers a good request."""
    before = gateway.balance()
    yield
    assert gateway.balance() == before
    ok = httpx.post(gateway.url + CHAT, json=GOOD | {"max_tokens": 2}, headers=gateway.headers())
    assert ok.status_code == 200, ok.text[:300]


CASES: list[tuple[str, Any, str, tuple[str, ...]]] = [
    # (name, body (JSON-encoded unless bytes), param, hints in the message)
    ("max_tokens over the plan", GOOD | {"max_tokens": 100_000}, "max_tokens", ("at most 64",)),
    ("max_tokens zero", GOOD | {"max_tokens": 0}, "max_tokens", ("max_tokens",)),
    ("max_tokens negative", GOOD | {"max_tokens": -5}, "max_tokens", ("greater than",)),
    ("n over the plan", GOOD | {"n": 50}, "n", ("at most 4",)),
    (
        "prompt longer than the context",
        GOOD | {"messages": [{"role": "user", "content": "word " * 2000}]},
        "messages",
        ("shorten",),
    ),
    ("invalid JSON", b'{"model": "fake", "messages": [', "", ("not valid JSON",)),
    ("empty body", b"", "", ("JSON",)),
    ("a JSON array", b"[1, 2]", "", ("object",)),
    (
        "invalid UTF-8",
        b'{"model": "fake", "messages": [{"role": "user", "content": "\xff\xfe\xfa"}]}',
        "",
        ("UTF-8",),
    ),
    ("messages as a string", GOOD | {"messages": "hello"}, "messages", ("messages", "list")),
    ("max_tokens as text", GOOD | {"max_tokens": "ten"}, "max_tokens", ("integer",)),
    ("temperature as text", GOOD | {"temperature": "hot"}, "temperature", ("number",)),
    ("temperature out of range", GOOD | {"temperature": 7}, "temperature", ("less than",)),
    ("model as a number", GOOD | {"model": 123}, "model", ("string",)),
    (
        "role unknown",
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        "messages[0].role",
        ("user",),
    ),
    ("unknown field", GOOD | {"frobnicate": True}, "frobnicate", ("Unrecognized", "frobnicate")),
    (
        "unknown nested field",
        {"model": MODEL, "messages": [{"role": "user", "content": "x", "mood": "happy"}]},
        "messages[0].mood",
        ("Unrecognized",),
    ),
    ("empty messages", GOOD | {"messages": []}, "messages", ("at least 1",)),
    ("missing messages", {"model": MODEL}, "messages", ("Missing required parameter",)),
    ("missing model", {"messages": GOOD["messages"]}, "model", ("Missing required parameter",)),
    ("stop empty", GOOD | {"stop": ""}, "stop", ("empty",)),
    ("too many stops", GOOD | {"stop": ["a", "b", "c", "d", "e"]}, "stop", ("at most 4",)),
    (
        "stream_options without stream",
        GOOD | {"stream_options": {"include_usage": True}},
        "stream_options",
        ("stream",),
    ),
]


@pytest.mark.parametrize(("name", "body", "param", "hints"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.usefixtures("unchanged")
def test_bad_chat_request_gets_a_400_that_says_what_to_fix(
    gateway: Gateway, name: str, body: Any, param: str, hints: tuple[str, ...]
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = assert_refused(post(gateway, content), 400, *hints)
    if param:
        assert error["param"] == param


COMPLETION_CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("prompt as a number", {"model": MODEL, "prompt": 5}, ("prompt",)),
    ("empty prompt list", {"model": MODEL, "prompt": []}, ("at least 1",)),
    ("logprobs over the cap", {"model": MODEL, "prompt": "x", "logprobs": 9}, ("logprobs",)),
    ("unknown field", {"model": MODEL, "prompt": "x", "logit_bias": {"1": 5}}, ("Unrecognized",)),
    ("prompt too long", {"model": MODEL, "prompt": "word " * 2000}, ("shorten",)),
]


@pytest.mark.parametrize(
    ("name", "body", "hints"), COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES]
)
@pytest.mark.usefixtures("unchanged")
def test_bad_completion_request_gets_a_400(
    gateway: Gateway, name: str, body: Any, hints: tuple[str, ...]
) -> None:
    assert_refused(post(gateway, json.dumps(body).encode(), "/v1/completions"), 400, *hints)


@pytest.mark.usefixtures("unchanged")
def test_body_over_the_size_cap_gets_413(gateway: Gateway) -> None:
    big = json.dumps(GOOD | {"user": "x" * 70_000}).encode()
    assert_refused(post(gateway, big), 413, "larger than 65536 bytes", "smaller")

    def chunks() -> Any:  # no Content-Length: the cap applies as the body streams in
        for _ in range(40):
            yield b" " * 4096
        yield json.dumps(GOOD).encode()

    response = httpx.post(
        gateway.url + CHAT, content=chunks(), timeout=30,
        headers=gateway.headers() | {"Content-Type": "application/json"},
    )  # fmt: skip
    assert_refused(response, 413, "larger than 65536 bytes")


@pytest.mark.usefixtures("unchanged")
def test_a_lying_content_length_does_not_hang_or_crash_the_server(gateway: Gateway) -> None:
    """A client that announces more bytes than it sends, then hangs up."""
    host, port = gateway.url.removeprefix("http://").split(":")
    body = json.dumps(GOOD).encode()
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 500}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request + body)
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)


@pytest.mark.usefixtures("unchanged")
def test_wrong_content_type_and_method(gateway: Gateway) -> None:
    response = post(gateway, b"model=fake", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= response.status_code < 500 and "error" in response.json()
    wrong = httpx.get(gateway.url + CHAT, headers=gateway.headers(), timeout=30)
    assert_refused(wrong, 405, "not allowed")
    bad_idem = post(gateway, json.dumps(GOOD).encode(), **{"Idempotency-Key": "k" * 300})
    assert_refused(bad_idem, 400, "Idempotency-Key", "255")
