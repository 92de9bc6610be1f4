"""``echo`` and prompt log-probabilities on ``/v1/completions``, in the OpenAI legacy format that
lm-evaluation-harness's ``local-completions`` reads: in the in-process engine, and through a
gateway (upstream mode) in front of it. Only plans with log-probabilities get them; the echoed
prompt is billed as prompt tokens, and the hold covers the worst case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from serve_helpers import LOGPROBS_PLAN, PRICE, SECRET, World, charge, run_server

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.local_engine import LocalEngine

PROMPT = "What is 3 + 4?"


def _expected(engine: LocalEngine, ids: list[int]) -> list[float]:
    """Each token's log-probability given the ones before it, straight from the model."""
    with torch.inference_mode():
        logits = engine.hf_model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = logits.log_softmax(-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _post(world: World, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{world.base_url}/completions",
        json={"model": world.model, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def _check_legacy(lp: Any, text: str, n_tokens: int, top: int) -> None:
    """The legacy lists: parallel, the first token null, offsets into the choice's text."""
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n_tokens
    assert len(lp.text_offset) == n_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(t) == top for t in lp.top_logprobs[1:])
    offset = 0
    for token, at in zip(lp.tokens, lp.text_offset, strict=True):
        assert at == offset
        offset += len(token)
    assert "".join(lp.tokens).startswith(text[: len(text) // 2])


def test_echo_returns_the_prompts_logprobs_as_the_model_gives_them(
    world: World, engine: LocalEngine
) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    before = world.balance()
    answer = world.client(key).completions.create(
        model=world.model, prompt=PROMPT, echo=True, max_tokens=1, logprobs=1, temperature=0
    )
    choice = answer.choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    lp = choice.logprobs
    _check_legacy(lp, choice.text, len(ids) + 1, 1)
    assert lp.tokens[: len(ids)] == [engine.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(_expected(engine, ids), abs=1e-4)
    for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert value <= max(top.values()) + 1e-6  # what lm-eval's is_greedy compares
    # billed: the prompt as prompt tokens, one completion token
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), 1)
    assert before - world.balance() == charge(len(ids), 1)
    assert world.held() == 0


def test_echo_with_max_tokens_0_returns_the_prompt_alone(world: World, engine: LocalEngine) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    before = world.balance()
    answer = world.client(key).completions.create(
        model=world.model, prompt=[PROMPT, "Spell cat."], echo=True, max_tokens=0, logprobs=2
    )
    assert [c.text for c in answer.choices] == [PROMPT, "Spell cat."]
    assert all(c.finish_reason == "length" for c in answer.choices)
    _check_legacy(answer.choices[0].logprobs, PROMPT, len(ids), 2)
    assert answer.usage.completion_tokens == 0
    assert before - world.balance() == charge(answer.usage.prompt_tokens, 0)
    # without logprobs, echo is the client's own text: allowed on the default plan too
    plain = world.client().completions.create(
        model=world.model, prompt=PROMPT, echo=True, max_tokens=0
    )
    assert plain.choices[0].text == PROMPT and plain.choices[0].logprobs is None


def test_token_id_prompts_as_lm_eval_sends_them(world: World, engine: LocalEngine) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    first = engine.tokenizer(PROMPT)["input_ids"]
    second = engine.tokenizer("Spell cat.")["input_ids"]
    body = {"prompt": [first, second], "echo": True, "max_tokens": 1, "logprobs": 1,
            "temperature": 0, "seed": 1234}  # fmt: skip
    answer = _post(world, key, body).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    lps = [c["logprobs"] for c in answer["choices"]]
    assert [len(lp["tokens"]) for lp in lps] == [len(first) + 1, len(second) + 1]
    assert lps[0]["token_logprobs"][1 : len(first)] == pytest.approx(
        _expected(engine, first), abs=1e-4
    )
    assert answer["choices"][0]["text"].startswith(PROMPT)
    assert answer["usage"]["prompt_tokens"] == len(first) + len(second)
    # one id as a flat list; an id outside the vocabulary is a 400 that costs nothing
    single = _post(world, key, {**body, "prompt": first}).json()
    assert single["choices"][0]["logprobs"]["token_logprobs"] == lps[0]["token_logprobs"]
    before = world.balance()
    bad = _post(world, key, {**body, "prompt": [*first, 10**6]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    for wrong in ([], [[]], [-1], [True], [[1], "a"]):
        assert _post(world, key, {**body, "prompt": wrong}).status_code == 400
    assert world.balance() == before and world.held() == 0


def test_echo_is_refused_where_the_plan_says_no(world: World) -> None:
    before = world.balance()
    client = world.client()
    with pytest.raises(openai.BadRequestError) as e:  # default plan: no logprobs
        client.completions.create(
            model=world.model, prompt=PROMPT, echo=True, max_tokens=1, logprobs=1
        )
    assert "echo" in e.value.message and "not available on your plan" in e.value.message
    _, key = world.new_key(plan=LOGPROBS_PLAN)  # at most 3 alternatives, n ≤ 4, 64 tokens
    with pytest.raises(openai.BadRequestError, match="at most 3"):
        world.client(key).completions.create(
            model=world.model, prompt=PROMPT, echo=True, max_tokens=1, logprobs=4
        )
    with pytest.raises(openai.BadRequestError, match="at most 4 choice"):
        world.client(key).completions.create(
            model=world.model, prompt=PROMPT, echo=True, max_tokens=1, logprobs=1, n=5
        )
    with pytest.raises(openai.BadRequestError, match="set echo"):
        world.client(key).completions.create(model=world.model, prompt=PROMPT, max_tokens=0)
    with pytest.raises(openai.BadRequestError):  # max_tokens 0 is for legacy echo only
        client.chat.completions.create(
            model=world.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=0
        )
    assert world.balance() == before and world.held() == 0


def test_echo_with_n_and_stream(world: World) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    client = world.client(key)
    whole = client.completions.create(
        model=world.model, prompt=PROMPT, echo=True, max_tokens=4, logprobs=1, n=3, seed=7
    )
    assert len(whole.choices) == 3
    prompt_lps = [c.logprobs.token_logprobs[:5] for c in whole.choices]
    assert prompt_lps[0] == prompt_lps[1] == prompt_lps[2]  # every choice echoes the prompt
    assert all(c.text.startswith(PROMPT) for c in whole.choices)
    before = world.balance()
    chunks = list(
        client.completions.create(
            model=world.model, prompt=PROMPT, echo=True, max_tokens=4, logprobs=1, n=3, seed=7,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = ["", "", ""]
    tokens: list[list[str]] = [[], [], []]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.text
            tokens[c.index] += c.logprobs.tokens if c.logprobs else []
    assert texts == [c.text for c in whole.choices]  # the same seed, the same answers
    assert tokens == [c.logprobs.tokens for c in whole.choices]
    first = next(c for c in chunks if c.choices).choices[0]
    assert first.text == PROMPT and first.logprobs.token_logprobs[0] is None
    usage = chunks[-1].usage
    assert usage == whole.usage
    assert before - world.balance() == charge(usage.prompt_tokens, usage.completion_tokens)


def test_huge_echo_prompts_are_refused_before_any_work(world: World, engine: LocalEngine) -> None:
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    before = world.balance()
    context = engine.context_length or 0
    too_long = [5] * context  # token ids: exactly the context, no room left
    body = {"prompt": too_long, "echo": True, "max_tokens": 0, "logprobs": 1}
    answer = _post(world, key, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    text = _post(world, key, {**body, "prompt": "word " * 10_000})  # over the body limit
    assert text.status_code in (400, 413)
    fits = _post(world, key, {**body, "prompt": [5] * (context - 1)})
    assert fits.status_code == 200
    assert len(fits.json()["choices"][0]["logprobs"]["tokens"]) == context - 1
    assert world.held() == 0
    assert before - world.balance() == charge(context - 1, 0)


@pytest.fixture
def echo_gateway(world: World, tmp_path: Path) -> Iterator[World]:
    """A gateway forwarding to ``world``'s server with a key whose plan has logprobs; its own
    key ``key`` has that plan too."""
    _, upstream_key = world.new_key(plan=LOGPROBS_PLAN)
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(world.model, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    settings = ServeSettings(
        upstream_url=world.base_url, upstream_api_key=upstream_key, model_name=world.model,
        database_url=url, secret=SECRET, upstream_watermark=False,  # an Avocado upstream
    )  # fmt: skip
    key_id, key = billing.create_key("acme", plan=LOGPROBS_PLAN)
    with run_server(create_app(settings, billing=billing)) as base_url:
        yield World(base_url, billing, world.model, key, key_id)
    billing.close()


def test_echo_through_the_gateway_is_forwarded_checked_and_metered(
    echo_gateway: World, world: World, engine: LocalEngine
) -> None:
    gateway = echo_gateway
    ids = engine.tokenizer(PROMPT)["input_ids"]
    body = {"prompt": [ids], "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}
    before = gateway.balance()
    answer = _post(gateway, gateway.key, body)
    assert answer.status_code == 200, answer.text
    lp = answer.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(_expected(engine, ids), abs=1e-4)
    usage = answer.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(ids), 1)
    assert before - gateway.balance() == charge(len(ids), 1)
    # the prompt alone (max_tokens 0), a text prompt, streamed
    only = _post(gateway, gateway.key, {**body, "max_tokens": 0}).json()
    assert len(only["choices"][0]["logprobs"]["tokens"]) == len(ids)
    assert only["usage"]["completion_tokens"] == 0
    chunks = list(
        gateway.client().completions.create(
            model=gateway.model, prompt=PROMPT, echo=True, max_tokens=3, logprobs=1, n=2,
            stream=True, stream_options={"include_usage": True}, temperature=0,
        )
    )  # fmt: skip
    texts = ["", ""]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert all(t.startswith(PROMPT) and len(t) > len(PROMPT) for t in texts)
    usage_chunk = chunks[-1].usage
    assert usage_chunk.completion_tokens <= 6
    gateway.wait_settled()
    charged = sum(u["charge"] for u in gateway.billing.usage("acme"))
    expected = charge(len(ids), 1) + charge(len(ids), 0)
    expected += charge(usage_chunk.prompt_tokens, usage_chunk.completion_tokens)
    assert charged == expected
    # a plan without logprobs is refused at the gateway, before the upstream is asked
    _, plain = gateway.new_key()
    refused = _post(gateway, plain, body)
    assert refused.status_code == 400 and "echo" in refused.json()["error"]["message"]
