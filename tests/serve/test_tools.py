"""Tool calling through ``avocado serve --upstream`` in front of a fake upstream that answers
as vLLM does, with the official ``openai`` client: a round trip (request → ``tool_calls`` →
``tool`` message → final answer), streamed call deltas, named and required tool choices —
each checked field by field and metered once on the usage the upstream reports — and the
refusals: malformed tools (400, nothing charged), a plan without tools, a lying upstream
(502), the in-process engine (400: the model does not support it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from serve_helpers import run_server
from upstream_world import (
    SECRET,
    FakeUpstream,
    World,
    charge,
    error_of,
    prepare_ledger,
    upstream_world,
    usage_events,
)

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.engine import ToolCallDelta
from avocado_llm.serve.tools import MAX_SCHEMA_DEPTH, MAX_TOOLS_BYTES, CallChecker

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get-time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with upstream_world(tmp_path_factory.mktemp("tools")) as world:
        yield world


def test_a_tool_calling_round_trip_is_answered_and_metered_once_per_request(gw: World) -> None:
    client = gw.client()
    before, events = gw.balance(), len(usage_events(gw))
    first = client.chat.completions.create(model=gw.model, messages=ASK, tools=[WEATHER, TIME])
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls" and choice.index == 0
    message = choice.message
    assert message.role == "assistant" and message.content is None
    [call] = message.tool_calls
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "C"}
    # the fake's truth: a token per piece (the call's name, then 8 characters of arguments)
    assert first.usage.completion_tokens == 1 + -(-len(call.function.arguments) // 8)
    assert first.id.startswith("chatcmpl-") and first.object == "chat.completion"

    conversation = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    final = client.chat.completions.create(
        model=gw.model, messages=conversation, tools=[WEATHER, TIME], max_tokens=3
    )
    [answer] = final.choices
    assert answer.message.tool_calls is None and answer.message.content == " w0 w1 w2"
    assert answer.finish_reason == "length" and final.usage.completion_tokens == 3

    used = usage_events(gw)[: len(usage_events(gw)) - events]
    assert [e["request_id"] for e in used] == [final.id, first.id]  # once each
    for event, response in zip(used, [final, first], strict=True):
        assert event["status"] == "ok"
        assert event["prompt_tokens"] == response.usage.prompt_tokens
        assert event["completion_tokens"] == response.usage.completion_tokens
        assert event["charge"] == charge(event["prompt_tokens"], event["completion_tokens"])
    assert before - gw.balance() == sum(e["charge"] for e in used)
    assert gw.held() == 0


def test_tool_call_deltas_stream_as_openai_sends_them(gw: World) -> None:
    events = len(usage_events(gw))
    stream = gw.client().chat.completions.create(
        model=gw.model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        if piece.index not in calls:  # a call's first piece: its id, type and name
            assert piece.id and piece.type == "function" and piece.function.name
            calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
        else:
            assert piece.id is None and piece.function.name is None
        calls[piece.index]["arguments"] += piece.function.arguments or ""
    assert sorted(calls) == [0, 1]  # required + parallel: both tools, in order
    assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get-time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert json.loads(calls[1]["arguments"]) == {"zone": "Paris"}
    assert calls[0]["id"] != calls[1]["id"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert all(not c.choices[0].delta.content for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == len(pieces)
    [event] = usage_events(gw)[: len(usage_events(gw)) - events]
    assert event["request_id"] == chunks[0].id and event["status"] == "ok"
    assert (event["prompt_tokens"], event["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_a_named_tool_choice_calls_that_function_and_none_calls_nothing(gw: World) -> None:
    client = gw.client()
    named = client.chat.completions.create(
        model=gw.model, messages=ASK, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get-time"}},
        parallel_tool_calls=False,
    )  # fmt: skip
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "get-time"
    plain = client.chat.completions.create(
        model=gw.model, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=2
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content == " w0 w1"


def test_tool_schemas_are_prompt_tokens_held_and_billed(gw: World) -> None:
    """Large schemas: the upstream counts them as prompt (as a chat template renders them);
    the gateway's hold and its bound on a believable usage count them too (before, the bound
    left them out: the upstream's usage was refused as a lie, a 502)."""
    big = {**WEATHER, "function": {**WEATHER["function"], "description": "x" * 40_000}}
    before = gw.balance()
    answer = gw.client().chat.completions.create(
        model=gw.model, messages=ASK, tools=[big], max_tokens=64
    )
    assert answer.usage.prompt_tokens > 10_000
    assert before - gw.balance() == charge(
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )


def test_with_a_tokenizer_whose_template_leaves_tools_out_the_hold_still_covers_them(
    tmp_path: Path, zoo_dir: Path
) -> None:
    """A gateway counting prompts with the model's tokenizer (``--model``), whose template
    (SmolLM2's kind) renders no tools, but the upstream's does. The hold counts the tools'
    tokens anyway, so the charge (capped by the hold) is the upstream's usage; before, it was
    capped below it. And the round trip's earlier call, whose content is null, is counted as
    empty: the template adds content to a string (before: a 400, the template refused it)."""
    model = tmp_path / "model"
    shutil.copytree(zoo_dir / "qwen-tiny", model)
    (model / "chat_template.jinja").write_text(
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    prepare_ledger(url, 100 * MICRO)
    billing = Billing(url, SECRET)
    big = {**WEATHER, "function": {**WEATHER["function"], "description": "sunny " * 2000}}
    try:
        with FakeUpstream(delay_s=0) as upstream:
            settings = ServeSettings(upstream_url=upstream.url, model_name="fake", secret=SECRET,
                                     model_dir=model, database_url=url)  # fmt: skip
            _, key = billing.create_key("acme")
            with run_server(create_app(settings, billing=billing)) as base_url:
                client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
                before = billing.balance("acme")
                answer = client.chat.completions.create(
                    model="fake", messages=ASK, tools=[big], max_tokens=16
                )
                call = answer.choices[0].message
                result = {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "21"}
                conversation = [*ASK, call.model_dump(exclude_none=True), result]
                final = client.chat.completions.create(
                    model="fake", messages=conversation, tools=[WEATHER], max_tokens=2
                )
                assert final.choices[0].message.content == " w0 w1"
                client.close()
        assert answer.choices[0].finish_reason == "tool_calls"
        usage = answer.usage
        assert usage.prompt_tokens > 3000  # the fake counts the tools' JSON, as vLLM would
        last = final.usage
        assert before - billing.balance("acme") == charge(
            usage.prompt_tokens, usage.completion_tokens
        ) + charge(last.prompt_tokens, last.completion_tokens)
    finally:
        billing.close()


BAD_TOOLS: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": 5}}}}}]}, "not a valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "required": "a"}}}]}, "not a valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string"}}}]}, "type 'object'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "parameters"),
    ({"tools": [WEATHER, WEATHER]}, "unique"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": []}, "must not be empty"),
    ({"tool_choice": "auto"}, "only allowed when tools"),
    ({"parallel_tool_calls": True}, "only allowed when tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "not in tools"),
    ({"messages": [{"role": "tool", "content": "21"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c", "type":
        "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type":
        "function", "function": {"name": "f", "arguments": {}}}]}]}, "arguments"),
]  # fmt: skip


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(("extra", "says"), BAD_TOOLS)
def test_malformed_tools_are_a_400_that_says_why_and_cost_nothing(
    gw: World, extra: dict[str, Any], says: str
) -> None:
    before, events = gw.balance(), len(usage_events(gw))
    body = {"model": gw.model, "messages": ASK, **extra}
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(**body)
    assert says in e.value.message, e.value.message
    assert gw.balance() == before and len(usage_events(gw)) == events


@pytest.mark.parametrize("case", ["deep", "large"])
def test_schemas_too_deep_or_too_large_are_refused(gw: World, case: str) -> None:
    if case == "deep":
        parameters = _deep(MAX_SCHEMA_DEPTH)  # twice as many levels: properties, then a
        says = "nested more than"
    else:
        parameters = {"type": "object", "description": "x" * (MAX_TOOLS_BYTES // 3)}
        says = "bytes"
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(model=gw.model, messages=ASK, tools=tools)
    assert says in e.value.message
    assert error_of(e.value)["param"].startswith("tools[0].function.parameters")


def test_a_plan_without_tools_refuses_them(gw: World) -> None:
    _, key = gw.new_key(plan=Plan(name="text-only", tools=False))
    with pytest.raises(openai.BadRequestError) as e:
        gw.client(key).chat.completions.create(model=gw.model, messages=ASK, tools=[WEATHER])
    assert "not available on your plan ('text-only')" in e.value.message
    assert error_of(e.value)["param"] == "tools"
    plain = gw.client(key).chat.completions.create(model=gw.model, messages=ASK, max_tokens=2)
    assert plain.choices[0].message.content == " w0 w1"


@pytest.mark.parametrize(
    "lie",
    [
        '[{"index": 0, "id": "c1", "type": "function", "function": {"name": "rm_everything"}}]',
        '[{"index": 0, "type": "function", "function": {"name": "get_weather"}}]',
        '[{"index": 3, "id": "c1", "type": "function", "function": {"name": "get_weather"}}]',
        '[{"index": 0, "id": "c1", "type": "function", "function": {"name": 7}}]',
        '{"index": 0}',
    ],
    ids=["unoffered-name", "no-id", "index-gap", "name-not-text", "not-a-list"],
)
def test_an_upstream_call_that_breaks_the_rules_is_a_502_and_not_billed(
    gw: World, lie: str
) -> None:
    before, events = gw.balance(), len(usage_events(gw))
    lying = [{"role": "user", "content": f"weather? #fake:toolcall={lie}"}]
    with pytest.raises(openai.InternalServerError) as e:
        gw.client().chat.completions.create(model=gw.model, messages=lying, tools=[WEATHER])
    assert e.value.status_code == 502 and "rm_everything" not in e.value.message
    assert gw.balance() == before and len(usage_events(gw)) == events and gw.held() == 0


def test_the_in_process_engine_refuses_tools(world: Any) -> None:
    """The offline demo's engine cannot call tools: a 400 that says so, never a plain answer
    that ignored them; nothing is held or charged."""
    client = world.client()
    before = world.balance()
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "21"}]  # fmt: skip
    for body in ({"messages": ASK, "tools": [WEATHER]}, {"messages": history}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=world.model, max_tokens=4, **body)
        assert "does not support tool calling" in e.value.message
        assert error_of(e.value)["code"] == "unsupported_feature"
    assert world.balance() == before and world.billing.usage(world.account) == []


def test_the_meta_schema_check_comes_after_the_keys_credit(gw: World) -> None:
    """Checking a large schema against its meta-schema costs CPU (in a worker thread): a key
    without credit is refused before it, so it cannot spend the server's CPU for free."""
    gw.billing.create_account("broke", 0)
    _, key = gw.billing.create_key("broke")
    invalid = {"type": "object", "properties": {"a": {"type": "text"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": invalid}}]
    with pytest.raises(openai.RateLimitError) as e:
        gw.client(key).chat.completions.create(model=gw.model, messages=ASK, tools=tools)
    assert e.value.code == "insufficient_quota"
    with pytest.raises(openai.BadRequestError) as bad:  # with credit: the schema's 400
        gw.client().chat.completions.create(model=gw.model, messages=ASK, tools=tools)
    assert "tools[0].function.parameters is not a valid JSON Schema" in bad.value.message
    assert "at tools[0].function.parameters.properties.a.type" in bad.value.message


def test_the_call_checker_refuses_what_an_upstream_must_not_send() -> None:
    """Piece by piece, as a stream brings them (the gateway turns a refusal into a 502)."""
    tools = [WEATHER, TIME]
    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather"}}
    more = {"index": 0, "function": {"arguments": '{"city"'}}
    checker = CallChecker.of(tools, "auto")
    assert checker.take(0, [first]) == [ToolCallDelta(0, "c1", "get_weather", "")]
    assert checker.take(0, [more]) == [ToolCallDelta(0, None, None, '{"city"')]
    assert checker.take(1, [first]) and checker.calls(1) == 1  # another choice: its own calls
    refused = [
        (CallChecker.of(tools, "none"), [first]),  # tool_choice none: no call at all
        (CallChecker.of(None, None), [first]),  # no tools offered
        (CallChecker.of(tools, {"type": "function", "function": {"name": "get-time"}}), [first]),
        (checker, [{**first, "index": 1, "id": "c2", "function": {"name": "get_weather"}},
                   {"index": 0, "function": {"name": "get-time"}}]),  # a call renamed
        (checker, [{"index": 0, "id": "other", "function": {"arguments": "}"}}]),  # re-id'd
        (checker, [{**first, "index": 5}]),  # out of order
        (checker, [{**first, "index": 1, "id": "x" * 300}]),  # an id too long
        (checker, [{**first, "index": 1, "type": "retrieval"}]),
        (checker, [{"index": "1"}]),
        (checker, ["a call"]),
        (checker, {"index": 0}),
    ]  # fmt: skip
    for fresh, pieces in refused:
        with pytest.raises(ValueError):
            fresh.take(0, pieces)
    single = CallChecker.of(tools, "required", parallel=False)  # parallel_tool_calls false
    single.take(0, [first])
    with pytest.raises(ValueError, match="more than 1"):
        single.take(0, [{**first, "index": 1, "id": "c2"}])
    capped = CallChecker(frozenset({"f"}), max_calls=2)
    for i in range(2):
        capped.take(0, [{"index": i, "id": f"c{i}", "function": {"name": "f"}}])
    with pytest.raises(ValueError, match="more than 2"):
        capped.take(0, [{"index": 2, "id": "c2", "function": {"name": "f"}}])
