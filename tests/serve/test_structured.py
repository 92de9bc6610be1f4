"""Structured outputs through ``avocado serve --upstream`` in front of a fake upstream that
answers as vLLM does, with the official ``openai`` client: ``response_format`` ``json_schema``
(with ``strict``) and ``json_object`` forwarded, answered and metered once; malformed or
oversized schemas a 400 that says why (nothing charged); a plan without structured outputs and
the in-process engine refuse them (400), never answering free text instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from upstream_world import World, charge, error_of, upstream_world, usage_events

from avocado_llm.billing import Plan
from avocado_llm.serve.tools import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH

ASK = [{"role": "user", "content": "Describe Paris as JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
        "capital": {"type": "boolean"},
        "districts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "population", "capital", "districts"],
    "additionalProperties": False,
}


def schema_format(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, **extra}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with upstream_world(tmp_path_factory.mktemp("structured")) as world:
        yield world


def test_a_json_schema_answer_follows_the_schema_and_is_metered_once(gw: World) -> None:
    before, events = gw.balance(), len(usage_events(gw))
    answer = gw.client().chat.completions.create(
        model=gw.model, messages=ASK, response_format=schema_format(CITY, strict=True)
    )
    [choice] = answer.choices
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    value = json.loads(choice.message.content)
    assert value == {"name": "Paris", "population": 7, "capital": True, "districts": ["Paris"]}
    # the fake's truth: a token per 8 characters of the JSON text
    assert answer.usage.completion_tokens == -(-len(choice.message.content) // 8)
    [event] = usage_events(gw)[: len(usage_events(gw)) - events]
    assert event["request_id"] == answer.id and event["status"] == "ok"
    assert event["prompt_tokens"] == answer.usage.prompt_tokens
    assert event["completion_tokens"] == answer.usage.completion_tokens
    assert (
        before - gw.balance()
        == event["charge"]
        == charge(answer.usage.prompt_tokens, answer.usage.completion_tokens)
    )


def test_the_clients_parse_helper_gets_a_typed_answer(gw: World) -> None:
    """``client.chat.completions.parse`` sends a strict json_schema made from a pydantic model
    and parses the answer into it."""

    class City(BaseModel):
        name: str
        population: int
        capital: bool
        districts: list[str]

    parsed = gw.client().chat.completions.parse(model=gw.model, messages=ASK, response_format=City)
    city = parsed.choices[0].message.parsed
    assert city == City(name="Paris", population=7, capital=True, districts=["Paris"])


def test_a_streamed_json_object_answer_and_plain_text_format(gw: World) -> None:
    events = len(usage_events(gw))
    chunks = list(
        gw.client().chat.completions.create(
            model=gw.model, messages=ASK, response_format={"type": "json_object"},
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"answer": "w0"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == -(-len(text) // 8)
    plain = gw.client().chat.completions.create(
        model=gw.model, messages=ASK, response_format={"type": "text"}, max_tokens=2
    )
    assert plain.choices[0].message.content == " w0 w1"
    assert len(usage_events(gw)) == events + 2


def test_a_json_answer_cut_by_max_tokens_says_length(gw: World) -> None:
    answer = gw.client().chat.completions.create(
        model=gw.model, messages=ASK, response_format=schema_format(CITY), max_tokens=2
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 2 and len(answer.choices[0].message.content) == 16


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


BAD_FORMATS: list[tuple[Any, str]] = [
    (schema_format({"type": "object", "properties": {"a": {"type": "text"}}}),
     "not a valid JSON Schema"),
    (schema_format({"type": "object", "required": [1]}), "not a valid JSON Schema"),
    (schema_format({"type": "string", "pattern": "(unclosed"}), "not a valid JSON Schema"),
    (schema_format({"type": "object", "$schema": 5}), "JSON Schema"),
    (schema_format(_deep(MAX_SCHEMA_DEPTH + 1)), "nested more than"),
    (schema_format({"description": "x" * MAX_SCHEMA_BYTES}), "bytes"),
    ({"type": "json_schema", "json_schema": {"name": "city"}}, "schema is required"),
    ({"type": "json_schema", "json_schema": {"name": "a city", "schema": CITY}}, "name"),
    (schema_format("{}"), "schema"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "xml"}, "response_format"),
    ({"type": "json_object", "schema": CITY}, "response_format"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "says"), BAD_FORMATS)
def test_a_malformed_response_format_is_a_400_that_says_why(gw: World, fmt: Any, says: str) -> None:
    before, events = gw.balance(), len(usage_events(gw))
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(model=gw.model, messages=ASK, response_format=fmt)
    assert says in e.value.message, e.value.message
    assert (error_of(e.value)["param"] or "").startswith("response_format")
    assert gw.balance() == before and len(usage_events(gw)) == events


def test_a_plan_without_structured_outputs_refuses_them(gw: World) -> None:
    _, key = gw.new_key(plan=Plan(name="free-text", structured_outputs=False))
    for fmt in ({"type": "json_object"}, schema_format(CITY)):
        with pytest.raises(openai.BadRequestError) as e:
            gw.client(key).chat.completions.create(model=gw.model, messages=ASK,
                                                   response_format=fmt)  # fmt: skip
        assert "not available on your plan ('free-text')" in e.value.message
        assert error_of(e.value)["param"] == "response_format"
    text = gw.client(key).chat.completions.create(
        model=gw.model, messages=ASK, response_format={"type": "text"}, max_tokens=2
    )
    assert text.choices[0].message.content == " w0 w1"


def test_the_in_process_engine_refuses_structured_outputs(world: Any) -> None:
    """The offline demo's engine has no constrained decoding: a 400 that says the model does
    not support it, never free text in place of JSON; nothing held or charged."""
    client = world.client()
    before = world.balance()
    for fmt in ({"type": "json_object"}, schema_format(CITY, strict=True)):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model=world.model, messages=ASK, response_format=fmt, max_tokens=4
            )
        assert "does not support structured outputs" in e.value.message
        assert error_of(e.value)["code"] == "unsupported_feature"
    plain = client.chat.completions.create(
        model=world.model, messages=ASK, response_format={"type": "text"}, max_tokens=2
    )
    assert plain.usage.completion_tokens <= 2
    assert world.balance() < before and len(world.billing.usage(world.account)) == 1
