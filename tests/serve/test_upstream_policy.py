"""The plan's policy and the watermark in upstream mode, as in process: a gateway in front of
the fake upstream (``tests/reliability/fake_upstream.py``, answering as vLLM does), with every
forwarded body recorded. The gateway sends each request's watermark — the account's key
(derived from the server secret, never the secret) and the plan's strength — in ``vllm_xargs``
for the vLLM logits processor (``avocado_watermark.vllm``); a client can neither send its own
nor read the one sent; the plan's caps on ``max_tokens``, ``n`` and log-probabilities are
enforced before anything is forwarded, on either engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from avocado_watermark import xargs
from serve_helpers import LOGPROBS_PLAN, PRICE, SECRET, World, run_server

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.protect.scheme import DEFAULT_PARAMS, Watermark, account_key
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.upstream_probe import is_probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from fake_upstream import MODEL, make_app

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]
UNMARKED_PLAN = Plan(name="unmarked", watermark=0.0)
STRONG_PLAN = Plan(name="strong", watermark=4.5, max_n=2)


class Recorder:
    """An ASGI wrapper that keeps every JSON body the app receives (path, body)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        if raw and not is_probe(json.loads(raw)):  # the gateway's probe: test_upstream_probe
            self.bodies.append((scope["path"], json.loads(raw)))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@dataclass
class Gateway:
    world: World
    upstream: Recorder
    accounts: dict[str, int] = field(default_factory=dict)

    def forwarded(self) -> list[dict[str, Any]]:
        """The bodies forwarded since the last call."""
        out = [body for _, body in self.upstream.bodies]
        self.upstream.bodies.clear()
        return out


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """``avocado serve --upstream`` (in a thread) in front of the recording fake upstream;
    accounts ``acme`` and ``globex``, $1 each; ``world.key`` is acme's on the default plan."""
    recorder = Recorder(make_app(0.0))
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    accounts = {name: billing.create_account(name, MICRO) for name in ("acme", "globex")}
    with run_server(recorder) as upstream_url:  # type: ignore[arg-type]
        settings = ServeSettings(upstream_url=upstream_url, model_name=MODEL, database_url=url,
                                 secret=SECRET)  # fmt: skip
        key_id, key = billing.create_key("acme")
        with run_server(create_app(settings, billing=billing)) as base_url:
            world = World(base_url, billing, MODEL, key, key_id)
            yield Gateway(world, recorder, accounts)
            for client in world.clients:
                client.close()
    billing.close()


def expected_xargs(account_id: int, delta: float) -> dict[str, Any]:
    return xargs.to_xargs(Watermark(account_key(SECRET, account_id), delta, DEFAULT_PARAMS))


def ask_every_way(client: openai.OpenAI, **extra: Any) -> list[str]:
    """One chat, one streamed chat, one completion, one streamed completion: their texts."""
    texts = []
    for stream in (False, True):
        chat = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, stream=stream, **extra
        )
        texts.append(
            "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
            if stream
            else chat.choices[0].message.content or ""
        )
        done = client.completions.create(
            model=MODEL, prompt="3 + 4 =", max_tokens=8, stream=stream, **extra
        )
        texts.append(
            "".join(c.choices[0].text for c in done if c.choices)
            if stream
            else done.choices[0].text
        )
    return texts


def test_each_request_carries_its_accounts_watermark_key_never_the_secret(
    gateway: Gateway,
) -> None:
    world = gateway.world
    _, globex_key = world.new_key("globex", plan=STRONG_PLAN)
    _, acme_second = world.new_key("acme")
    for key, account, delta in (
        (world.key, "acme", 3.0),
        (acme_second, "acme", 3.0),  # another key of the same account: the same watermark
        (globex_key, "globex", 4.5),  # another account, another plan
    ):
        answers = ask_every_way(world.client(key))
        assert all(answers)
        bodies = gateway.forwarded()
        assert len(bodies) == 4
        want = expected_xargs(gateway.accounts[account], delta)
        for body in bodies:
            assert body["vllm_xargs"] == want
            assert xargs.from_xargs(body["vllm_xargs"]) is not None  # what the processor reads
            assert SECRET not in json.dumps(body)
    keys = {account_key(SECRET, i) for i in gateway.accounts.values()}
    assert len(keys) == 2  # the accounts' keys differ


def test_a_plan_without_watermark_forwards_none(gateway: Gateway) -> None:
    world = gateway.world
    _, key = world.new_key(plan=UNMARKED_PLAN)
    ask_every_way(world.client(key))
    bodies = gateway.forwarded()
    assert len(bodies) == 4 and all("vllm_xargs" not in b for b in bodies)


@pytest.mark.parametrize(
    "extra",
    [
        {"vllm_xargs": {xargs.KEY: 1, xargs.DELTA: 0.0}},  # turn it off
        {"vllm_xargs": {xargs.KEY: 12345}},  # someone else's key
        {"vllm_xargs": {}},
        {"avocado_watermark_key": 12345},
        {"watermark": False},
        {"extra_args": {"avocado_watermark_delta": 0}},
        {"logits_processors": ["avocado_watermark.vllm:WatermarkLogitsProcessor"]},
    ],
)
def test_a_client_cannot_supply_or_switch_off_the_watermark(
    gateway: Gateway, extra: dict[str, Any]
) -> None:
    world = gateway.world
    client = world.client()
    before = world.balance()
    for call in (
        lambda: client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, extra_body=extra
        ),
        lambda: client.completions.create(
            model=MODEL, prompt="3 + 4 =", max_tokens=4, extra_body=extra
        ),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        name = next(iter(extra))
        assert e.value.status_code == 400
        assert f"Unrecognized request argument supplied: {name}" in e.value.message
    assert gateway.forwarded() == []  # nothing reached the upstream
    assert world.balance() == before and world.held() == 0


def test_the_answer_does_not_reveal_the_key(gateway: Gateway) -> None:
    world = gateway.world
    key = str(account_key(SECRET, gateway.accounts["acme"]))
    raw = world.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=8
    )
    seen = raw.http_response.text + json.dumps(dict(raw.headers))
    assert "vllm_xargs" not in seen and xargs.PREFIX not in seen and key not in seen


def test_the_gateway_forwards_no_watermark_when_told_the_upstream_has_none(
    tmp_path: Path,
) -> None:
    """``upstream_watermark=False`` (``--no-upstream-watermark``): for an upstream that is not
    vLLM with the processor (another Avocado server refuses ``vllm_xargs``)."""
    recorder = Recorder(make_app(0.0))
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    _, key = billing.create_key("acme")
    with run_server(recorder) as upstream_url:  # type: ignore[arg-type]
        settings = ServeSettings(upstream_url=upstream_url, model_name=MODEL, database_url=url,
                                 secret=SECRET, upstream_watermark=False)  # fmt: skip
        with run_server(create_app(settings, billing=billing)) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
            client.close()
    billing.close()
    assert len(recorder.bodies) == 1 and "vllm_xargs" not in recorder.bodies[0][1]


# --- the plan's caps, enforced before anything is forwarded ---------------------------------


def test_plan_caps_are_refused_before_the_upstream_is_asked(gateway: Gateway) -> None:
    world = gateway.world
    client = world.client()
    before = world.balance()
    default = Plan()
    refused = [
        ({"max_tokens": default.max_tokens + 1}, "max_tokens"),
        ({"n": default.max_n + 1}, "n"),
        ({"logprobs": True, "top_logprobs": 1}, "logprobs"),
    ]
    for extra, param in refused:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=QUESTION, **extra)
        assert e.value.body["param"] == param  # type: ignore[index]
    completion_refused = [
        ({"max_tokens": default.max_tokens + 1}, "max_tokens"),
        ({"n": default.max_n + 1}, "n"),
        ({"logprobs": 1}, "logprobs"),
    ]
    for extra, param in completion_refused:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="3 + 4 =", **extra)
        assert e.value.body["param"] == param  # type: ignore[index]
    _, research = world.new_key(plan=LOGPROBS_PLAN)
    with pytest.raises(openai.BadRequestError) as e:
        world.client(research).chat.completions.create(
            model=MODEL, messages=QUESTION, logprobs=True,
            top_logprobs=LOGPROBS_PLAN.max_top_logprobs + 1,
        )  # fmt: skip
    assert e.value.body["param"] == "top_logprobs"  # type: ignore[index]
    assert gateway.forwarded() == []
    assert world.balance() == before and world.held() == 0


def test_what_a_plan_allows_is_forwarded_as_asked_and_within_its_caps(gateway: Gateway) -> None:
    world = gateway.world
    _, research = world.new_key(plan=LOGPROBS_PLAN)
    client = world.client(research)
    chat = client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=LOGPROBS_PLAN.max_n, max_tokens=LOGPROBS_PLAN.max_tokens,
        logprobs=True, top_logprobs=LOGPROBS_PLAN.max_top_logprobs,
    )  # fmt: skip
    assert len(chat.choices) == LOGPROBS_PLAN.max_n
    assert all(c.logprobs and c.logprobs.content for c in chat.choices)
    done = client.completions.create(model=MODEL, prompt="3 + 4 =", logprobs=2, max_tokens=5)
    assert done.choices[0].logprobs is not None
    unasked = client.chat.completions.create(model=MODEL, messages=QUESTION)  # no max_tokens
    assert unasked.choices[0].message.content
    sent_chat, sent_done, sent_unasked = gateway.forwarded()
    assert sent_chat["n"] == LOGPROBS_PLAN.max_n
    assert sent_chat["max_tokens"] == LOGPROBS_PLAN.max_tokens
    assert sent_chat["logprobs"] is True
    assert sent_chat["top_logprobs"] == LOGPROBS_PLAN.max_top_logprobs
    assert sent_done["logprobs"] == 2 and sent_done["max_tokens"] == 5
    assert sent_unasked["max_tokens"] <= LOGPROBS_PLAN.max_tokens  # the plan's cap, not more
    assert "logprobs" not in sent_unasked
    for body in (sent_chat, sent_done, sent_unasked):  # the research plan watermarks too
        assert body["vllm_xargs"][xargs.KEY] == account_key(SECRET, gateway.accounts["acme"])


@pytest.mark.parametrize("flag", [None, "--no-upstream-watermark"])
def test_the_serve_command_forwards_the_watermark_unless_told_not_to(
    tmp_path: Path, flag: str | None
) -> None:
    """The real ``avocado serve --upstream`` process: the watermark goes upstream by default;
    ``--no-upstream-watermark`` keeps it back."""
    recorder = Recorder(make_app(0.0))
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    account = billing.create_account("acme", MICRO)
    _, key = billing.create_key("acme")
    billing.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with run_server(recorder) as upstream_url:  # type: ignore[arg-type]
        command = [sys.executable, "-m", "avocado_llm.cli", "serve", "--upstream", upstream_url,
                   "--model-name", MODEL, "--database-url", url, "--port", str(port),
                   *([flag] if flag else [])]  # fmt: skip
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "AVOCADO_SECRET": SECRET})  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                   max_retries=0)  # fmt: skip
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
    [(_, body)] = recorder.bodies
    if flag:
        assert "vllm_xargs" not in body
    else:
        assert body["vllm_xargs"] == expected_xargs(account, 3.0)
