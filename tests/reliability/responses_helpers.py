"""Helpers of the ``/v1/responses`` reliability tests (``test_attacks_responses*.py``): the
official client and raw posts against a gateway, a stream's events, and the fake upstream's
answer to a conversation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from fake_upstream import prompt_tokens, tokens_for
from rel_helpers import MODEL, Gateway

from avocado_llm.billing import Billing


@dataclass
class Wide:
    """A gateway without the reliability gateway's 255-token prompt cap (a tool's schema
    alone is more, by the gateway's byte bound): account ``acme``'s key and its ledger."""

    url: str
    key: str
    billing: Billing


def client(gateway: Gateway | Wide, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def post(gateway: Gateway | Wide, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/responses", json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {key}"}, timeout=30,
    )  # fmt: skip


def events_of(raw: str) -> list[dict[str, Any]]:
    """A Responses stream's events; every block is exactly ``event:`` and ``data:``."""
    events = []
    for block in raw.strip().split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: "), block[:300]
        data = json.loads(lines[1].removeprefix("data: "))
        assert lines[0] == f"event: {data['type']}"
        events.append(data)
    return events


def fake_answer(text: str, max_tokens: int) -> tuple[str, int, int]:
    """The fake's answer to a conversation whose message texts join to ``text``: its text,
    prompt tokens and completion tokens."""
    count = min(max_tokens, tokens_for(text))
    return "".join(f" w{i}" for i in range(count)), prompt_tokens(text), count
