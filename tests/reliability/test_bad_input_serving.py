"""Bad input from issue #18 (serving side), to a real ``avocado serve`` process: stop strings
longer than the cap are refused with a 400 that names ``stop`` and says the limit (they made
the in-process engine's matching quadratic, and stalled the model for everyone); stop strings
at the cap are served, and cost what any request costs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from rel_helpers import MODEL, Gateway

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
MAX_STOP_CHARS = 1000
"""The cap the API documents (``serve.protocol.MAX_STOP_CHARS``)."""


def post(gateway: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=gateway.headers(), timeout=30)


TOO_LONG = "x" * (MAX_STOP_CHARS + 1)


@pytest.mark.parametrize(
    "stop",
    [TOO_LONG, ["ok", TOO_LONG], [TOO_LONG] * 4, "z" * 60_000],
    ids=["one string", "one of a list", "four", "60,000 characters"],
)
@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_a_stop_string_over_the_cap_is_a_400_naming_stop(
    gateway: Gateway, stop: str | list[str], path: str
) -> None:
    before = gateway.balance()
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "stop": stop}
    body |= {"messages": MESSAGES} if path == CHAT else {"prompt": "hi"}
    response = post(gateway, path, body)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "stop"
    assert f"at most {MAX_STOP_CHARS} characters" in error["message"], error["message"]
    assert len(response.content) < 2_000  # the message quotes the input briefly, not whole
    assert gateway.balance() == before


@pytest.mark.parametrize("stream", [False, True])
def test_four_stop_strings_at_the_cap_are_served(gateway: Gateway, stream: bool) -> None:
    stops = [c * MAX_STOP_CHARS for c in "abcd"]
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stop": stops,
            "stream": stream}  # fmt: skip
    response = post(gateway, CHAT, body)
    assert response.status_code == 200, response.text[:300]
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["choices"][0]["message"]["content"]
