"""``POST /v1/responses`` through a real ``avocado serve --upstream`` process in front of the
fake upstream: the official client's answers asserted field by field against the fake's truth,
each metered once; then a zero-credit key, rate limits, a failing or lying upstream, forged
events, and hostile bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from fake_upstream import lie, prompt_tokens, sample, tokens_for
from pydantic import BaseModel
from rel_helpers import (
    MODEL,
    PRICE,
    SECRET,
    FakeUpstream,
    Gateway,
    ServerProcess,
    free_port,
    prepare_ledger,
    running,
)

from avocado_llm.billing import MICRO, Billing, Plan, charge_for

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


@dataclass
class Wide:
    """A gateway without the reliability gateway's 255-token prompt cap (a tool's schema
    alone is more, by the gateway's byte bound): account ``acme``'s key and its ledger."""

    url: str
    key: str
    billing: Billing


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


@pytest.fixture
def ledger(gateway: Gateway) -> Iterator[Billing]:
    billing = Billing(gateway.database_url, SECRET)
    yield billing
    billing.close()


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
