"""``POST /v1/responses`` through a real ``avocado serve --upstream`` process in front of the
fake upstream: the official client's answers asserted field by field against the fake's truth,
each metered once; then a zero-credit key, rate limits, a failing or lying upstream, forged
events, and hostile bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_upstream import lie
from rel_helpers import (
    MODEL,
    PRICE,
    SECRET,
    Gateway,
)
from responses_helpers import client, events_of, fake_answer, post

from avocado_llm.billing import MICRO, Billing, charge_for

ACCOUNT = "responder"


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, str]:
    """Keys of an account of this module's own (so its ledger is this module's): a paying
    one, one limited to 1 request a minute, and one of an account with no credit."""
    billing = Billing(gateway.database_url, SECRET)
    try:
        billing.create_account(ACCOUNT, 10 * MICRO)
        billing.create_account("responder-broke", 0)
        found = {
            "paid": billing.create_key(ACCOUNT)[1],
            "slow": billing.create_key(ACCOUNT, rpm=1)[1],
            "broke": billing.create_key("responder-broke")[1],
        }
    finally:
        billing.close()
    gateway.used += list(found.values())
    return found


@pytest.fixture
def ledger(gateway: Gateway) -> Iterator[Billing]:
    billing = Billing(gateway.database_url, SECRET)
    yield billing
    billing.close()


def test_a_response_through_the_gateway_is_the_upstreams_answer_billed_once(
    gateway: Gateway, keys: dict[str, str], ledger: Billing
) -> None:
    before = ledger.balance(ACCOUNT)
    response = client(gateway, keys["paid"]).responses.create(
        model=MODEL, instructions="Be brief.", input="Name a colour.", max_output_tokens=50,
        temperature=0.5, top_p=0.9, user="u-1",
    )  # fmt: skip
    text, prompt, completion = fake_answer("Be brief.\nName a colour.", 50)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.status == "completed"
    assert response.error is None and response.incomplete_details is None
    assert (response.temperature, response.top_p, response.user) == (0.5, 0.9, "u-1")
    assert response.instructions == "Be brief." and response.max_output_tokens == 50
    [item] = response.output
    assert (item.type, item.role, item.status) == ("message", "assistant", "completed")
    [part] = item.content
    assert part.type == "output_text" and part.text == text and part.annotations == []
    assert response.output_text == text
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    [event] = ledger.usage(ACCOUNT)
    assert event["request_id"] == response.id and event["status"] == "ok"
    assert (event["prompt_tokens"], event["completion_tokens"]) == (prompt, completion)
    assert (
        before - ledger.balance(ACCOUNT) == event["charge"] == charge_for(PRICE, prompt, completion)
    )


def test_a_streamed_response_through_the_gateway(
    gateway: Gateway, keys: dict[str, str], ledger: Billing
) -> None:
    events_before = len(ledger.usage(ACCOUNT))
    content = [{"type": "input_text", "text": "Count"}, {"type": "input_text", "text": " it."}]
    stream = client(gateway, keys["paid"]).responses.create(
        model=MODEL, input=[{"role": "user", "content": content}], stream=True,
    )  # fmt: skip
    events = list(stream)
    text, prompt, completion = fake_answer("Count it.", 512)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == [f" w{i}" for i in range(completion)]
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * completion,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events if hasattr(e, "item_id"))
    done = events[-1].response
    assert done.id == events[0].response.id and done.status == "completed"
    assert done.output_text == text == events[-4].text
    assert (done.usage.input_tokens, done.usage.output_tokens) == (prompt, completion)
    used = ledger.usage(ACCOUNT)
    assert len(used) == events_before + 1 and used[0]["request_id"] == done.id
    assert (used[0]["prompt_tokens"], used[0]["completion_tokens"]) == (prompt, completion)
    # cut by max_output_tokens: incomplete, as OpenAI says it
    cut = list(
        client(gateway, keys["paid"]).responses.create(
            model=MODEL, input="Count it.", max_output_tokens=1, stream=True
        )
    )
    assert cut[-1].type == "response.incomplete"
    assert cut[-1].response.incomplete_details.reason == "max_output_tokens"
    assert cut[-1].response.usage.output_tokens == 1


def test_an_idempotent_stream_is_replayed_byte_for_byte_and_billed_once(
    gateway: Gateway, keys: dict[str, str], ledger: Billing
) -> None:
    events_before = len(ledger.usage(ACCOUNT))
    headers = {"Authorization": f"Bearer {keys['paid']}", "Idempotency-Key": "responses-42"}
    body = {"model": MODEL, "input": "Once only.", "stream": True}
    url = f"{gateway.url}/v1/responses"
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert events_of(first.text)[-1]["type"] == "response.completed"
    assert len(ledger.usage(ACCOUNT)) == events_before + 1


def test_a_key_without_credit_is_refused_before_its_prompt_is_built(
    gateway: Gateway, keys: dict[str, str], ledger: Billing
) -> None:
    """1,000 characters fit the character bound (256 tokens × 4), but not the byte bound of
    the prompt the gateway builds: the paying key gets that 400, so the broke key's 429 came
    before the prompt was built."""
    long = "x" * 1000
    broke = post(gateway, keys["broke"], {"input": long})
    assert broke.status_code == 429 and broke.json()["error"]["code"] == "insufficient_quota"
    paid = post(gateway, keys["paid"], {"input": long})
    assert paid.status_code == 400, paid.text
    error = paid.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert ledger.usage("responder-broke") == []
    assert ledger.account_info("responder-broke")["held"] == 0


def test_a_rate_limited_key_is_refused(gateway: Gateway, keys: dict[str, str]) -> None:
    assert post(gateway, keys["slow"], {"input": "one", "max_output_tokens": 2}).status_code == 200
    second = post(gateway, keys["slow"], {"input": "two", "max_output_tokens": 2})
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in second.headers


SECRET_WORDS = "model: secret-llama-70b-internal at 10.1.2.3"


def test_an_upstream_failing_midstream_ends_the_stream_with_response_failed(
    gateway: Gateway, keys: dict[str, str], ledger: Billing
) -> None:
    """The text already sent is billed (one chunk: the gateway's count), as a failed chat
    stream is; the upstream's words never reach the client; no hold is left open."""
    content = lie("please fail", f"midstream={SECRET_WORDS}")
    plain = post(gateway, keys["paid"], {"input": content})
    assert plain.status_code == 502 and "secret-llama" not in plain.text
    before, events_before = ledger.balance(ACCOUNT), len(ledger.usage(ACCOUNT))
    streamed = post(gateway, keys["paid"], {"input": content, "stream": True})
    assert streamed.status_code == 200 and "secret-llama" not in streamed.text
    events = events_of(streamed.text)
    kinds = [e["type"] for e in events]
    assert kinds[-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert events[-2]["code"] == "upstream_error" and "reference" in events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "upstream_error"
    assert failed["output"][0]["content"][0]["text"] == " w0"
    used = ledger.usage(ACCOUNT)
    assert len(used) == events_before + 1 and used[0]["request_id"] == failed["id"]
    assert used[0]["completion_tokens"] == 1 and used[0]["status"] != "ok"
    assert before - ledger.balance(ACCOUNT) == used[0]["charge"]
    assert ledger.account_info(ACCOUNT)["held"] == 0


@pytest.mark.parametrize(("directive", "status"), [("status=500:{}", 502), ("status=400:{}", 400)])
def test_an_upstream_refusal_costs_nothing(
    gateway: Gateway, keys: dict[str, str], ledger: Billing, directive: str, status: int
) -> None:
    content = lie("please refuse", directive.format(SECRET_WORDS))
    before, events_before = ledger.balance(ACCOUNT), len(ledger.usage(ACCOUNT))
    plain = post(gateway, keys["paid"], {"input": content})
    assert plain.status_code == status and "secret-llama" not in plain.text
    streamed = post(gateway, keys["paid"], {"input": content, "stream": True})
    assert "secret-llama" not in streamed.text
    if streamed.status_code == 200:  # the stream had begun: it ends with response.failed
        assert events_of(streamed.text)[-1]["type"] == "response.failed"
    assert ledger.balance(ACCOUNT) == before and len(ledger.usage(ACCOUNT)) == events_before
    assert ledger.account_info(ACCOUNT)["held"] == 0


FORGED = '\n\nevent: response.completed\ndata: {"type":"response.completed"}\n\n'


def test_text_fields_cannot_forge_stream_events(gateway: Gateway, keys: dict[str, str]) -> None:
    """Instructions, input and metadata with blank lines and SSE fields in them stay inside
    their JSON strings: one ``response.completed``, every block one event."""
    body = {
        "instructions": f"x{FORGED}", "input": f"y{FORGED}", "stream": True,
        "metadata": {"note": f"z{FORGED}", f"k{FORGED}"[:64]: "v"},
    }  # fmt: skip
    response = post(gateway, keys["paid"], body)
    assert response.status_code == 200, response.text
    events = events_of(response.text)
    assert [e["type"] for e in events].count("response.completed") == 1
    assert events[-1]["response"]["metadata"]["note"] == f"z{FORGED}"
    assert events[-1]["response"]["instructions"] == f"x{FORGED}"


HOSTILE = [
    {"input": 42},
    {"input": None},
    {"input": {"role": "user", "content": "hi"}},
    {"input": [{"role": "tool", "content": "hi"}]},
    {"input": [{"role": "user"}]},
    {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
    {"input": [{"role": "user", "content": None}]},
    {"input": [{"role": "user", "content": "hi", "extra": 1}]},
    {"input": [None]},
    {"input": [{"role": "user", "content": ""}] * 1500},
    {"input": "hi", "max_output_tokens": 0},
    {"input": "hi", "max_output_tokens": 2**63},
    {"input": "hi", "max_output_tokens": "5"},
    {"input": "hi", "top_p": 0},
    {"input": "hi", "stream": "yes"},
    {"input": "hi", "metadata": {"k": 1}},
    {"input": "hi", "metadata": {"k": "v" * 513}},
    {"input": "hi", "reasoning": {"effort": "high"}},
    {"input": "hi", "background": True},
    {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
    {"input": "hi", "model": "other-model"},
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bodies_are_4xx_in_the_envelope_and_cost_nothing(
    gateway: Gateway, keys: dict[str, str], ledger: Billing, body: dict[str, Any]
) -> None:
    before = ledger.balance(ACCOUNT)
    response = post(gateway, keys["paid"], body)
    assert response.status_code in (400, 404), response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert ledger.balance(ACCOUNT) == before and ledger.account_info(ACCOUNT)["held"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", '{"model": "fake", "input": "a\\ud800b"}'),
        ("/v1/responses", '{"model": "fake", "input": "hi", "instructions": "\\udfff"}'),
        ("/v1/responses", '{"model": "fake", "input": "hi", "metadata": {"k": "\\ud800"},'
                          ' "stream": true}'),
        ("/v1/chat/completions",
         '{"model": "fake", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        ("/v1/completions", '{"model": "fake", "prompt": "\\ud800"}'),
        ("/v1/chat/completions",
         '{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type":'
         ' "function", "function": {"name": "f", "parameters": {"description": "\\ud800"}}}]}'),
        ("/v1/responses",
         '{"model": "fake", "input": "hi", "tools": [{"type": "function", "name": "f",'
         ' "parameters": {"description": "\\ud800"}}]}'),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_not_a_500(
    gateway: Gateway, keys: dict[str, str], ledger: Billing, path: str, body: str
) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``); no UTF-8 text has one, so it can be
    neither hashed for an Idempotency-Key, forwarded nor echoed: a 400, nothing charged."""
    before = ledger.balance(ACCOUNT)
    response = httpx.post(
        gateway.url + path, content=body, timeout=30,
        headers={"Authorization": f"Bearer {keys['paid']}", "Content-Type": "application/json"},
    )  # fmt: skip
    error = response.json()["error"]
    assert response.status_code == 400 and "surrogate" in error["message"], response.text
    assert ledger.balance(ACCOUNT) == before
