"""A real Avocado server on loopback for the serve tests: uvicorn in a background thread, a
SQLite ledger in a temporary directory, and the official ``openai`` client to call it.

    with run_server(app) as base_url:  # http://127.0.0.1:<port>/v1
        openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
from fastapi import FastAPI

from avocado_llm.billing import Billing, Plan, Price, charge_for
from avocado_llm.serve.background import serve_in_thread

SECRET = "test-secret-not-for-production"
PRICE = Price(input_per_1m=1_000_000, output_per_1m=2_000_000, per_request=10)
"""1 µ$ per prompt token, 2 µ$ per completion token, 10 µ$ per request: easy to check by hand."""


@contextmanager
def run_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port until the block ends; yields the /v1 URL."""
    with serve_in_thread(app) as origin:
        yield f"{origin}/v1"


@dataclass
class World:
    """One server with its ledger: an account ``acme`` with credit and a key for the model."""

    base_url: str
    billing: Billing
    model: str
    key: str
    key_id: str
    account: str = "acme"
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str | None = None) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0)
        self.clients.append(client)
        return client

    def async_client(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0)

    def new_key(self, account: str | None = None, **options: object) -> tuple[str, str]:
        """``(key_id, key)`` of a new key (``models=``, ``rpm=``, ``tpm=``, ``plan=``)."""
        return self.billing.create_key(account or self.account, **options)  # type: ignore[arg-type]

    def balance(self, account: str | None = None) -> int:
        return self.billing.balance(account or self.account)

    def held(self, account: str | None = None) -> int:
        return int(self.billing.account_info(account or self.account)["held"])

    def wait_settled(self, account: str | None = None, timeout: float = 10.0) -> None:
        """Until no hold is open (a hung-up stream is settled by the server shortly after)."""
        deadline = time.monotonic() + timeout
        while self.held(account) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.held(account) == 0, "a hold is still open"


def charge(prompt_tokens: int, completion_tokens: int) -> int:
    """What the price table says a request with this usage costs."""
    return charge_for(PRICE, prompt_tokens, completion_tokens)


LOGPROBS_PLAN = Plan(name="research", max_tokens=64, max_n=4, logprobs=True, max_top_logprobs=3)


def hang_up_after(stream: Any, chunks_with_text: int) -> None:
    """Read an ``openai`` stream until that many chunks carried text, then close it."""
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == chunks_with_text:
            break
    stream.close()
