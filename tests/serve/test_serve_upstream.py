"""Upstream mode: a metering gateway (its own ledger) in front of an OpenAI-compatible server —
here another Avocado server on loopback — billing by the upstream's reported usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from serve_helpers import PRICE, SECRET, World, charge, hang_up_after, run_server

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve import ServeSettings, create_app

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


@pytest.fixture
def gateway(world: World, tmp_path: Path) -> Iterator[World]:
    """A gateway forwarding to ``world``'s server with ``world``'s key."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(world.model, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    settings = ServeSettings(
        upstream_url=world.base_url, upstream_api_key=world.key, model_name=world.model,
        database_url=url, secret=SECRET, upstream_watermark=False,  # an Avocado upstream
    )  # fmt: skip
    key_id, key = billing.create_key("acme")
    with run_server(create_app(settings, billing=billing)) as base_url:
        yield World(base_url, billing, world.model, key, key_id)
    billing.close()


def test_gateway_answers_and_bills_by_the_upstreams_usage(gateway: World, world: World) -> None:
    direct = world.client().chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20
    )
    before = gateway.balance()
    answer = gateway.client().chat.completions.create(
        model=gateway.model, messages=QUESTION, temperature=0, max_tokens=20
    )
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert answer.usage == direct.usage
    usage = answer.usage
    assert before - gateway.balance() == charge(usage.prompt_tokens, usage.completion_tokens)


def test_gateway_streams_with_usage_and_completions(gateway: World) -> None:
    client = gateway.client()
    chunks = list(
        client.chat.completions.create(
            model=gateway.model, messages=QUESTION, temperature=0, max_tokens=20,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("The answer is") and chunks[-1].usage.completion_tokens > 0
    done = client.completions.create(
        model=gateway.model, prompt="The answer", max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert done.usage.completion_tokens == 3
    assert len(gateway.billing.usage("acme")) == 2


def test_upstream_refusal_is_a_400_and_costs_nothing(gateway: World) -> None:
    before = gateway.balance()
    with pytest.raises(openai.BadRequestError) as e:  # only the upstream knows its context
        gateway.client().chat.completions.create(
            model=gateway.model, messages=QUESTION, max_tokens=500
        )
    assert "context length" in e.value.message
    assert gateway.balance() == before and gateway.held() == 0


def test_a_client_hang_up_reaches_the_upstream_and_both_charge_what_was_produced(
    gateway: World, world: World
) -> None:
    """A stream cut at the gateway closes the gateway's upstream connection too, so the upstream
    stops generating (vLLM aborts the request) and settles for what it produced; the gateway
    charges its customer for the tokens that had reached it."""
    max_tokens = 200
    stream = gateway.client().chat.completions.create(
        model=gateway.model, messages=QUESTION, max_tokens=max_tokens, temperature=1.0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    hang_up_after(stream, 3)
    gateway.wait_settled()
    world.wait_settled()
    [upstream] = world.billing.usage(world.account)
    assert upstream["status"] == "cancelled"  # it saw the hang-up, not a finished answer
    assert 3 <= upstream["completion_tokens"] < max_tokens
    [ours] = gateway.billing.usage(gateway.account)
    assert ours["status"] == "cancelled"
    assert 3 <= ours["completion_tokens"] <= upstream["completion_tokens"]
