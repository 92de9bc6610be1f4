"""``POST /v1/responses`` on the in-process engine (qwen-tiny), through the official ``openai``
client: the same answer as a chat completion, the Responses event stream, and the same money
path (one usage event per answer, idempotent replays free, credit and rate limits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import PRICE, SECRET, World, charge

from avocado_llm.billing import MICRO, Billing
from servers import avocado_serve

QUESTION = "What is 3 + 4?"


def _events(raw: str) -> list[dict[str, Any]]:
    """The events of a Responses stream: ``event: <type>`` then ``data: <json>``."""
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def test_a_response_answers_as_chat_does_and_is_metered_once(world: World) -> None:
    client = world.client()
    chat = client.chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=20,
    )  # fmt: skip
    before = world.balance()
    response = client.responses.create(
        model=world.model, input=QUESTION, temperature=0, max_output_tokens=20,
        metadata={"order": "42"},
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.output_text == chat.choices[0].message.content
    item = response.output[0]
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_") and item.content[0].type == "output_text"
    assert response.metadata == {"order": "42"} and response.max_output_tokens == 20
    usage = response.usage
    assert usage.input_tokens == chat.usage.prompt_tokens
    assert usage.output_tokens == chat.usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    events = world.billing.usage(world.account)
    assert len(events) == 2 and events[0]["request_id"] == response.id
    assert (events[0]["prompt_tokens"], events[0]["completion_tokens"]) == (
        usage.input_tokens, usage.output_tokens,
    )  # fmt: skip
    assert before - world.balance() == charge(usage.input_tokens, usage.output_tokens)
    # the month's statement shows it as any chat completion: one charge line, by request id
    statement = world.billing.statement(world.account, datetime.now(UTC).strftime("%Y-%m"))
    [line] = [e for e in statement["entries"] if e["request_id"] == response.id]
    assert line["kind"] == "charge" and -line["amount"] == events[0]["charge"]
    assert line["completion_tokens"] == usage.output_tokens
    assert statement["charges"] == sum(e["charge"] for e in events)


def test_instructions_and_message_items_are_the_chat_messages(world: World) -> None:
    client = world.client()
    messages: Any = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "The answer is 2."},
        {"role": "user", "content": QUESTION},
    ]
    chat = client.chat.completions.create(
        model=world.model, messages=messages, temperature=0, max_tokens=12
    )
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is 1 + 1?"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "The answer is 2.", "annotations": []}]},
        {"role": "user", "content": QUESTION},
    ]  # fmt: skip
    response = client.responses.create(
        model=world.model, instructions="Answer briefly.", input=items, temperature=0,
        max_output_tokens=12,
    )  # fmt: skip
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.instructions == "Answer briefly."


def test_a_streamed_response_is_the_responses_event_sequence(world: World) -> None:
    client = world.client()
    plain = client.responses.create(
        model=world.model, input=QUESTION, temperature=0, max_output_tokens=20
    )
    events = list(
        client.responses.create(
            model=world.model, input=QUESTION, temperature=0, max_output_tokens=20, stream=True
        )
    )
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == plain.output_text and len(deltas) > 1
    done = events[-1].response
    assert events[-4].text == text and done.output_text == text
    assert done.id == events[0].response.id and events[0].response.status == "in_progress"
    assert done.usage.output_tokens == plain.usage.output_tokens
    event = world.billing.usage(world.account)[0]
    assert event["request_id"] == done.id and event["status"] == "ok"
    assert event["completion_tokens"] == done.usage.output_tokens
    # the SDK's own accumulator (strict about order and ids) takes the stream too
    with client.responses.stream(
        model=world.model, input=QUESTION, temperature=0, max_output_tokens=20
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == text
    assert len(world.billing.usage(world.account)) == 3


def test_a_client_leaving_a_stream_pays_once_for_what_was_produced(world: World) -> None:
    before = world.balance()
    stream = world.client().responses.create(
        model=world.model, input=QUESTION, max_output_tokens=40, stream=True
    )
    with stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break  # hang up after the first text
    world.wait_settled()
    [event] = world.billing.usage(world.account)
    assert event["request_id"].startswith("resp_") and event["completion_tokens"] >= 1
    assert before - world.balance() == event["charge"]
    assert event["charge"] == charge(event["prompt_tokens"], event["completion_tokens"])


def test_max_output_tokens_reached_is_an_incomplete_response(world: World) -> None:
    client = world.client()
    response = client.responses.create(model=world.model, input=QUESTION, max_output_tokens=2)
    assert response.status == "incomplete" and response.output[0].status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 2
    events = list(
        client.responses.create(model=world.model, input=QUESTION, max_output_tokens=2, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 2
    assert len(world.billing.usage(world.account)) == 2


def test_an_idempotent_retry_is_replayed_and_not_charged_again(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.key}", "Idempotency-Key": "resp-1"}
    url = f"{world.base_url}/responses"
    for stream in (False, True):
        body = {"model": world.model, "input": QUESTION, "max_output_tokens": 6, "stream": stream}
        headers["Idempotency-Key"] = f"resp-{stream}"
        first = httpx.post(url, json=body, headers=headers, timeout=60)
        again = httpx.post(url, json=body, headers=headers, timeout=60)
        assert first.status_code == again.status_code == 200, first.text
        assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
        if stream:
            assert _events(first.text)[-1]["type"] in ("response.completed", "response.incomplete")
        other = httpx.post(url, json={**body, "max_output_tokens": 7}, headers=headers)
        assert other.status_code == 409
    assert len(world.billing.usage(world.account)) == 2


def test_credit_and_rate_limits_apply(world: World) -> None:
    world.billing.create_account("poor", 0)
    _, broke = world.new_key(account="poor")
    with pytest.raises(openai.RateLimitError) as e:
        world.client(broke).responses.create(model=world.model, input=QUESTION)
    assert e.value.code == "insufficient_quota"
    assert world.billing.usage("poor") == [] and world.held("poor") == 0
    _, slow = world.new_key(rpm=1)
    client = world.client(slow)
    client.responses.create(model=world.model, input=QUESTION, max_output_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        client.responses.create(model=world.model, input=QUESTION, max_output_tokens=2)
    assert e.value.code == "rate_limit_exceeded"
    assert len(world.billing.usage(world.account)) == 1


BAD = [
    ({"input": "hi", "tools": []}, "tools", "tools must not be empty"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools", "only function tools"),
    ({"input": "hi", "tool_choice": "auto"}, "tool_choice", "only allowed when tools are given"),
    ({"input": "hi", "seed": 1}, "seed", "Unrecognized request argument"),
    ({"input": "hi", "store": True}, "store", "does not store responses"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "does not store"),
    ({"input": []}, "input", "at least 1 item"),
    ({}, "input", "Missing required parameter"),
    ({"input": "hi", "max_output_tokens": 100_000}, "max_output_tokens", "max_output_tokens is"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format", "'json_schema'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input", "input[0].content[0] is of type 'input_image'"),
    ({"input": [{"type": "reasoning", "summary": []}]},
     "input", "send message, function_call and function_call_output items only"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
     "input[0].content[0].type", "content parts are output_text"),
    ({"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
    ({"input": "hi", "temperature": 3}, "temperature", "less than or equal to 2"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param", "words"), BAD)
def test_malformed_requests_get_a_clear_400_and_cost_nothing(
    world: World, extra: dict[str, Any], param: str, words: str
) -> None:
    before = world.balance()
    response = httpx.post(
        f"{world.base_url}/responses", json={"model": world.model, **extra},
        headers={"Authorization": f"Bearer {world.key}"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert world.balance() == before and world.held() == 0


CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "name": "get_weather", "parameters": CITY}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"input": "hi", "tools": [WEATHER]}, "tools", "does not support tool calling"),
        ({"input": [{"role": "user", "content": "hi"}, CALL]}, "input",
         "does not support tool calling"),
        ({"input": "hi", "text": {"format": {"type": "json_object"}}}, "text.format",
         "does not support structured outputs"),
    ],
)  # fmt: skip
def test_the_in_process_engine_refuses_tools_and_structured_outputs(
    world: World, extra: dict[str, Any], param: str, words: str
) -> None:
    response = httpx.post(
        f"{world.base_url}/responses", json={"model": world.model, **extra},
        headers={"Authorization": f"Bearer {world.key}"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["code"] == "unsupported_feature" and "response_format" not in error["message"]
    assert world.billing.usage(world.account) == []


def test_stored_responses_do_not_exist(world: World) -> None:
    client = world.client()
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError) as e:
            call("resp_123")
        assert "does not store responses" in e.value.message
    anonymous = httpx.get(f"{world.base_url}/responses/resp_123", timeout=30)
    assert anonymous.status_code == 401


def test_the_avocado_serve_command_answers_responses(tmp_path: Path, zoo_dir: Path) -> None:
    """``avocado serve`` as a user runs it (its own process, the in-process engine): the
    official client's ``responses.create``, plain and streamed, each billed once."""
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price("tiny", PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    _, key = billing.create_key("acme")
    flags = ["--model", str(zoo_dir / "qwen-tiny"), "--model-name", "tiny",
             "--database-url", database_url]  # fmt: skip
    with avocado_serve(*flags, secret=SECRET, stop_timeout_s=30) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        plain = client.responses.create(
            model="tiny", input=QUESTION, temperature=0, max_output_tokens=12
        )
        streamed = list(
            client.responses.create(
                model="tiny", input=QUESTION, temperature=0, max_output_tokens=12, stream=True
            )
        )
        client.close()
    output = server.output
    assert server.returncode == 0, output
    assert plain.output_text and plain.usage.output_tokens > 0
    final = streamed[-1].response
    assert final.output_text == plain.output_text and final.usage == plain.usage
    events = billing.usage("acme")
    assert [e["request_id"] for e in events] == [final.id, plain.id]
    assert [e["completion_tokens"] for e in events] == [plain.usage.output_tokens] * 2
    assert "POST /v1/responses 200" in output and key not in output
    billing.close()
