"""The API as OpenAI's own client sees it: models, chat, completions, streams, usage, charges."""

from __future__ import annotations

import httpx
from serve_helpers import LOGPROBS_PLAN, World, charge

from avocado_llm.billing import Plan

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


def test_models_lists_the_served_model(world: World) -> None:
    models = world.client().models.list()
    assert [m.id for m in models.data] == [world.model]
    assert world.client().models.retrieve(world.model).id == world.model


def test_chat_answer_has_usage_and_is_charged_by_the_price_table(world: World) -> None:
    before = world.balance()
    answer = world.client().chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20
    )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content.startswith("The answer is")
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert before - world.balance() == charge(usage.prompt_tokens, usage.completion_tokens)
    [event] = world.billing.usage(world.account)
    assert event["request_id"] == answer.id and event["status"] == "ok"


def test_completion_answer_with_several_prompts(world: World) -> None:
    before = world.balance()
    answer = world.client().completions.create(
        model=world.model, prompt=["The answer is", "1 + 1 ="], max_tokens=5, temperature=0
    )
    assert answer.object == "text_completion"
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in answer.choices)
    usage = answer.usage
    assert usage is not None and usage.completion_tokens <= 10
    assert before - world.balance() == charge(usage.prompt_tokens, usage.completion_tokens)


def test_chat_stream_with_usage_matches_the_answer_and_the_charge(world: World) -> None:
    client = world.client()
    plain = client.chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20
    )
    before = world.balance()
    chunks = list(
        client.chat.completions.create(
            model=world.model, messages=QUESTION, temperature=0, max_tokens=20,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert before - world.balance() == charge(usage.prompt_tokens, usage.completion_tokens)


def test_completion_stream_ends_with_usage_then_done(world: World) -> None:
    with httpx.stream(
        "POST",
        f"{world.base_url}/completions",
        headers={"Authorization": f"Bearer {world.key}"},
        json={"model": world.model, "prompt": "The answer", "max_tokens": 4, "stream": True,
              "stream_options": {"include_usage": True}, "temperature": 0, "ignore_eos": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{"completion_tokens":4' in events[-2]


def test_seed_reproduces_and_n_gives_several_choices(world: World) -> None:
    _, key = world.new_key(plan=Plan(max_n=3))
    client = world.client(key)

    def ask() -> list[str]:
        answer = client.chat.completions.create(
            model=world.model, messages=QUESTION, n=3, seed=7, temperature=1.5, max_tokens=12
        )
        assert [c.index for c in answer.choices] == [0, 1, 2]
        return [c.message.content or "" for c in answer.choices]

    assert ask() == ask()


def test_stop_string_cuts_the_answer(world: World) -> None:
    answer = world.client().chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20, stop=[" is"]
    )
    assert answer.choices[0].message.content == "The answer"
    assert answer.choices[0].finish_reason == "stop"


def test_stop_strings_at_the_length_cap_still_cut_streamed_or_not(world: World) -> None:
    """Four stop strings of 1,000 characters (the cap), one of them starting like the text it
    must cut: the answer stops where a short stop string stops it, streamed or not."""
    stops = [" is" + "q" * 997, "The answer is 7" + "z" * 985, "x" * 1000, " is"]
    client = world.client()
    answer = client.chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20, stop=stops
    )
    assert answer.choices[0].message.content == "The answer"
    chunks = client.chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=20, stop=stops,
        stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer"


def test_logprobs_on_a_plan_that_allows_them(world: World) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    answer = world.client(key).chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=8,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    entries = answer.choices[0].logprobs.content
    assert entries and len(entries) == answer.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    assert entries[0].token == "The"


def test_health_metrics_openapi_are_public(world: World) -> None:
    root = world.base_url.removesuffix("/v1")
    world.client().chat.completions.create(
        model=world.model, messages=QUESTION, temperature=0, max_tokens=4
    )
    assert httpx.get(f"{root}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{root}/metrics").text
    assert 'avocado_requests_total{endpoint="create_chat_completion"' in metrics
    assert "avocado_batch_requests_bucket" in metrics
    paths = httpx.get(f"{root}/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions"} <= set(paths)
