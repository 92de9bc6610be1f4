"""Tools and structured outputs on ``POST /v1/responses`` through a real ``avocado serve
--upstream`` process in front of the fake upstream (shaped like vLLM): a tool-calling round trip
and a streamed function call, each field as the fake said it and each call metered once; JSON
schema answers read back by the official client; and refusals that cost nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_upstream import prompt_tokens, sample
from pydantic import BaseModel
from rel_helpers import (
    MODEL,
    SECRET,
    FakeUpstream,
    ServerProcess,
    free_port,
    prepare_ledger,
    running,
)
from responses_helpers import Wide, client, fake_answer, post

from avocado_llm.billing import MICRO, Billing, Plan


@pytest.fixture(scope="module")
def wide(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wide]:
    root = tmp_path_factory.mktemp("responses-wide")
    url = f"sqlite:///{root / 'ledger.db'}"
    key = prepare_ledger(url, 100 * MICRO)
    billing = Billing(url, SECRET)
    billing.create_account("plain", 10 * MICRO)
    server = ServerProcess(None, free_port(), upstream.url, url, root / "server.log")
    with running([server]):
        yield Wide(server.url, key, billing)
        server.stop()
    billing.close()


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather now.",
           "parameters": WEATHER_PARAMETERS}  # fmt: skip
QUESTION = "What is the weather in Paris?"


NO_FEATURES = Plan(name="plain", tools=False, structured_outputs=False)


def forwarded_tools_tokens(*tools: dict[str, Any]) -> int:
    """The fake's prompt tokens for the tools the gateway forwards (chat's shape)."""
    chat = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            for t in tools]  # fmt: skip
    return len(json.dumps(chat, separators=(",", ":")).encode()) // 4


def test_a_tool_calling_round_trip_through_the_gateway(wide: Wide) -> None:
    """request → function_call item → function_call_output → the final answer, each field
    as the fake (shaped like vLLM) said it, each call metered once on its usage."""
    events_before = len(wide.billing.usage("acme"))
    openai_client = client(wide, wide.key)
    first = openai_client.responses.create(model=MODEL, input=QUESTION, tools=[WEATHER])
    [call] = first.output  # calls alone: no empty message before them
    arguments = json.dumps(sample(WEATHER_PARAMETERS))
    assert (call.type, call.name, call.arguments, call.status) == (
        "function_call", "get_weather", arguments, "completed",
    )  # fmt: skip
    assert call.call_id.startswith("chatcmpl-tool-") and call.id.startswith("fc_")
    assert first.status == "completed" and first.output_text == ""
    assert first.tools[0].name == "get_weather" and first.tool_choice == "auto"
    assert first.usage.output_tokens == 1 + -(-len(arguments) // 8)  # the fake's truth
    assert first.usage.input_tokens == prompt_tokens(QUESTION) + forwarded_tools_tokens(WEATHER)

    turn: list[Any] = [{"role": "user", "content": QUESTION}, *first.output,
                       {"type": "function_call_output", "call_id": call.call_id,
                        "output": '{"celsius": 21}'}]  # fmt: skip
    final = openai_client.responses.create(model=MODEL, input=turn, tools=[WEATHER])
    text, _, completion = fake_answer(f'{QUESTION}\n\n{{"celsius": 21}}', 512)
    assert final.output_text == text and final.status == "completed"
    assert [item.type for item in final.output] == ["message"]
    assert final.usage.output_tokens == completion
    used = wide.billing.usage("acme")[: len(wide.billing.usage("acme")) - events_before]
    assert [e["request_id"] for e in used] == [final.id, first.id]  # once each
    for event, response in zip(used, [final, first], strict=True):
        assert (event["prompt_tokens"], event["completion_tokens"]) == (
            response.usage.input_tokens, response.usage.output_tokens,
        )  # fmt: skip


def test_a_streamed_function_call_is_the_responses_event_sequence(wide: Wide) -> None:
    openai_client = client(wide, wide.key)
    events = list(
        openai_client.responses.create(model=MODEL, input=QUESTION, tools=[WEATHER], stream=True)
    )
    arguments = json.dumps(sample(WEATHER_PARAMETERS))
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(pieces) == arguments and len(pieces) == -(-len(arguments) // 8)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(pieces),
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.arguments == "" and added.name == "get_weather"
    assert done.arguments == arguments == events[-3].arguments and done.id == added.id
    assert events[-1].response.output[0].call_id == added.call_id
    # the SDK's accumulator takes it, and two calls (tool_choice required) one after the other
    other = {**WEATHER, "name": "get_time", "description": "The time now."}
    with openai_client.responses.stream(
        model=MODEL, input=QUESTION, tools=[WEATHER, other], tool_choice="required"
    ) as stream:
        final = stream.get_final_response()
    assert [(c.type, c.name) for c in final.output] == [
        ("function_call", "get_weather"), ("function_call", "get_time"),
    ]  # fmt: skip
    assert final.output[0].id != final.output[1].id


class City(BaseModel):
    city: str
    population: int


def test_a_json_schema_answer_through_the_gateway(wide: Wide) -> None:
    openai_client = client(wide, wide.key)
    schema = City.model_json_schema()
    response = openai_client.responses.create(
        model=MODEL, input="A city, as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}},
    )  # fmt: skip
    assert json.loads(response.output_text) == sample(schema)
    assert response.text.format.type == "json_schema" and response.text.format.name == "city"
    event = wide.billing.usage("acme")[0]
    assert event["request_id"] == response.id
    assert event["completion_tokens"] == response.usage.output_tokens
    # the SDK's parse helper (a strict schema from the pydantic model) reads it back
    parsed = openai_client.responses.parse(model=MODEL, input="A city.", text_format=City)
    assert parsed.output_parsed == City(city="Paris", population=7)
    streamed = list(
        openai_client.responses.create(
            model=MODEL, input="JSON please.", text={"format": {"type": "json_object"}},
            stream=True,
        )
    )  # fmt: skip
    assert json.loads(streamed[-1].response.output_text) == {"answer": "w0"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [WEATHER]}, "tools", "not available on your plan"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format",
         "not available on your plan"),
        ({"tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "tools[0].parameters",
         "of type 'object'"),
        ({"tools": [{**WEATHER, "parameters": {"type": "object", "properties": 5}}]},
         "tools[0].parameters", "not a valid JSON Schema"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name", "names must be unique"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
         "tool_choice", "not in tools"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}},
         "text.format.schema", "not a valid JSON Schema"),
        ({"text": {"format": {"type": "json_schema", "name": "bad name", "schema": {}}}},
         "text.format.json_schema.name", "should match pattern"),
    ],
)  # fmt: skip
def test_tools_and_formats_refused_cost_nothing(
    wide: Wide, body: dict[str, Any], param: str, words: str
) -> None:
    key = wide.billing.create_key("plain", plan=NO_FEATURES)[1] if "plan" in words else wide.key
    before = wide.billing.balance("acme")
    response = post(wide, key, {"input": QUESTION, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert "response_format" not in error["message"] and ".function" not in error["message"]
    assert wide.billing.balance("acme") == before and wide.billing.account_info("acme")["held"] == 0
    assert wide.billing.usage("plain") == []
