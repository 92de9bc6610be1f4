"""``echo`` and prompt log-probabilities on ``/v1/completions``, in the OpenAI legacy format that
lm-evaluation-harness's ``local-completions`` reads: in the in-process engine, and through a
gateway (upstream mode) in front of it. Only plans with log-probabilities get them; the echoed
prompt is billed as prompt tokens, and the hold covers the worst case."""

from __future__ import annotations

import sys
import threading
import time
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
    alone = single["choices"][0]["logprobs"]
    assert alone["tokens"] == lps[0]["tokens"]
    # batched with a longer prompt (padding) vs alone: the same to float noise, not bit for bit
    assert alone["token_logprobs"][0] is None and lps[0]["token_logprobs"][0] is None
    assert alone["token_logprobs"][1:] == pytest.approx(lps[0]["token_logprobs"][1:], abs=1e-4)
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


# --- in front of a vLLM-like upstream (the fake: it echoes as vLLM does, and lies on demand) ---

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from fake_upstream import lie, prompt_tokens  # noqa: E402
from fake_upstream import make_app as fake_upstream_app  # noqa: E402

FAKE = "fake"


@pytest.fixture
def fake_gateway(tmp_path: Path) -> Iterator[World]:
    """A gateway (no tokenizer) in front of the fake upstream; its key's plan has logprobs."""
    url = f"sqlite:///{tmp_path / 'fake-gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(FAKE, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    key_id, key = billing.create_key("acme", plan=LOGPROBS_PLAN)
    with run_server(fake_upstream_app(0.0)) as upstream:
        settings = ServeSettings(upstream_url=upstream, model_name=FAKE, database_url=url,
                                 secret=SECRET)  # fmt: skip
        with run_server(create_app(settings, billing=billing)) as base_url:
            yield World(base_url, billing, FAKE, key, key_id)
    billing.close()


def test_echo_through_a_vllm_like_upstream_bills_its_usage(fake_gateway: World) -> None:
    gateway, text = fake_gateway, "Say something nice."
    client = gateway.client()
    only = client.completions.create(model=FAKE, prompt=text, echo=True, max_tokens=0, logprobs=1)
    assert only.choices[0].text == text and only.choices[0].finish_reason == "length"
    assert only.choices[0].logprobs.token_logprobs == [None]
    assert (only.usage.prompt_tokens, only.usage.completion_tokens) == (prompt_tokens(text), 0)
    both = client.completions.create(model=FAKE, prompt=[text, "Hi"], echo=True, max_tokens=2,
                                      n=2, logprobs=1)  # fmt: skip
    assert [c.text.split(" w")[0] for c in both.choices] == [text, text, "Hi", "Hi"]
    assert both.usage.completion_tokens == 2 * 2 * 2
    charged = sum(u["charge"] for u in gateway.billing.usage("acme"))
    assert charged == charge(prompt_tokens(text), 0) + charge(
        both.usage.prompt_tokens, both.usage.completion_tokens
    )


def test_a_lying_upstream_gains_nothing_from_echo(fake_gateway: World) -> None:
    gateway = fake_gateway
    before = gateway.balance()
    asked = lie("Say something nice.", 'usage={"prompt_tokens": 3, "completion_tokens": 40}')
    answer = _post(gateway, gateway.key, {"prompt": asked, "echo": True, "max_tokens": 2})
    assert answer.status_code == 502 and asked not in answer.text
    gateway.wait_settled()
    # at most what was held: the gateway's own prompt count and max_tokens, never the lie's 40
    held_worst = charge(len(asked.encode()) + 16, 2)
    assert 0 <= before - gateway.balance() <= held_worst
    zero = _post(
        gateway,
        gateway.key,
        {
            "prompt": lie("Hi", 'usage={"prompt_tokens": 3, "completion_tokens": 2}'),
            "echo": True,
            "max_tokens": 0,
        },
    )
    assert zero.status_code == 502  # 2 completion tokens for max_tokens 0 (one is vLLM's own)


def test_an_echo_the_client_got_is_billed_even_if_it_leaves_before_any_token(
    world: World, engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt's log-probabilities are what lm-eval pays for: a client that reads the echo
    and hangs up before the first generated token (a slow first step, held here until it has
    left) still pays the prompt (and the one step that ran), never nothing."""
    from avocado_llm.serve import local_engine

    real, left = local_engine.decode, threading.Event()

    def slow(*args: Any) -> None:
        left.wait(10)
        real(*args)

    monkeypatch.setattr(local_engine, "decode", slow)
    _, key = world.new_key(plan=LOGPROBS_PLAN)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    before = world.balance()
    stream = world.client(key).completions.create(
        model=world.model, prompt=PROMPT, echo=True, max_tokens=8, logprobs=1, stream=True
    )
    first = next(iter(stream))
    assert first.choices[0].text == PROMPT  # the echo, with the prompt's log-probabilities
    stream.close()
    time.sleep(0.5)  # the server sees the hang-up
    left.set()
    world.wait_settled()
    [event] = world.billing.usage(world.account)
    assert event["status"] == "cancelled" and event["prompt_tokens"] == len(ids)
    assert event["completion_tokens"] <= 1
    assert before - world.balance() == charge(len(ids), event["completion_tokens"])
