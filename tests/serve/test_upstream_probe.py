"""The gateway checks that the upstream watermarks: vLLM started without Avocado's logits
processor accepts any ``vllm_xargs`` and serves unmarked text, so ``avocado serve --upstream``
(watermark on) probes it with a watermark argument the processor refuses
(``avocado_llm.serve.upstream_probe``): no 400 naming it, no start; found so while serving,
every watermarked request is refused with a 503 (never served unmarked, never charged) until a
probe finds the processor again. The fakes are ``tests/reliability/fake_upstream.py`` (it
answers as vLLM with the processor does) and the same with the processor switched off."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from serve_helpers import PRICE, SECRET, World, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.upstream import UpstreamEngine
from avocado_llm.serve.upstream_probe import (
    MISSING,
    PROBE_XARGS,
    REFUSAL,
    Verdict,
    is_probe,
    probe,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from fake_upstream import MODEL, make_app

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


class Switchable:
    """The fake upstream; with ``processor`` off it drops ``vllm_xargs`` unread, as vLLM
    without ``--logits-processors`` does (and answers). Keeps the bodies it answered that
    were not probes, and counts the probes."""

    def __init__(self) -> None:
        self.app = make_app(0.0)
        self.processor = True
        self.bodies: list[dict[str, Any]] = []
        self.probes = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw, more = b"", True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        if raw:
            body = json.loads(raw)
            if is_probe(body):
                self.probes += 1
            else:
                self.bodies.append(body)
            if not self.processor:
                body.pop("vllm_xargs", None)
            raw = json.dumps(body).encode()
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def ledger(root: Path) -> tuple[str, Billing]:
    url = f"sqlite:///{root / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    return url, billing


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def serve_command(upstream_url: str, database_url: str, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "avocado_llm.cli", "serve", "--upstream", upstream_url,
         "--model-name", MODEL, "--database-url", database_url, "--port", "0", *flags],
        env={**os.environ, "AVOCADO_SECRET": SECRET}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_serve_command_refuses_to_start_in_front_of_vllm_without_the_processor(
    tmp_path: Path,
) -> None:
    upstream = Switchable()
    upstream.processor = False
    url, billing = ledger(tmp_path)
    billing.close()
    with run_server(upstream) as upstream_url:  # type: ignore[arg-type]
        proc = serve_command(upstream_url, url)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert f"error: {MISSING}" in out
    assert "--logits-processors avocado_watermark.vllm:WatermarkLogitsProcessor" in out
    assert "--no-upstream-watermark" in out
    assert upstream.probes >= 1 and upstream.bodies == []  # the probe only


def test_the_app_refuses_to_start_and_starts_once_the_processor_is_there() -> None:
    upstream = Switchable()
    upstream.processor = False

    async def start(url: str) -> Verdict | None:
        engine = UpstreamEngine(url, model_name=MODEL)
        try:
            await engine.start()
            return engine.guard.verdict if engine.guard else None
        finally:
            await engine.aclose()

    with run_server(upstream) as upstream_url:  # type: ignore[arg-type]
        with pytest.raises(RuntimeError) as e:
            asyncio.run(start(upstream_url))
        assert str(e.value) == MISSING
        upstream.processor = True
        assert asyncio.run(start(upstream_url)) is Verdict.MARKS
        # told the upstream has none: no probe, no watermark sent
        upstream.processor, probes = False, upstream.probes
        engine = UpstreamEngine(upstream_url, model_name=MODEL, watermark=False)
        asyncio.run(engine.start())
        asyncio.run(engine.aclose())
        assert upstream.probes == probes and engine.guard is None


@dataclass
class Live:
    world: World
    engine: UpstreamEngine
    upstream: Switchable
    unmarked_key: str


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A gateway in front of the switchable fake (processor on at the start), probing every
    0.1 s; ``world.key`` watermarks (the default plan), ``unmarked_key`` does not."""
    upstream = Switchable()
    url, billing = ledger(tmp_path)
    key_id, key = billing.create_key("acme")
    _, unmarked = billing.create_key("acme", plan=Plan(name="unmarked", watermark=0.0))
    with run_server(upstream) as upstream_url:  # type: ignore[arg-type]
        engine = UpstreamEngine(upstream_url, model_name=MODEL, probe_every_s=0.1)
        settings = ServeSettings(upstream_url=upstream_url, model_name=MODEL, database_url=url,
                                 secret=SECRET)  # fmt: skip
        app = closing(create_app(settings, engine=engine, billing=billing), engine)
        with run_server(app) as base_url:  # type: ignore[arg-type]
            world = World(base_url, billing, MODEL, key, key_id)
            yield Live(world, engine, upstream, unmarked)
            for client in world.clients:
                client.close()
    billing.close()


def closing(app: Any, engine: UpstreamEngine) -> Any:
    """``app``, closing ``engine`` (which it did not build) when it shuts down."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def then_close(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await engine.aclose()
            await send(message)

        await app(scope, receive, then_close)

    return wrapped


def ask(client: openai.OpenAI, stream: bool = False) -> str:
    out = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=4,
        stream=stream,  # type: ignore[arg-type]
    )
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in out if c.choices)  # type: ignore[union-attr]
    return out.choices[0].message.content or ""  # type: ignore[union-attr]


def test_a_processor_lost_while_serving_gets_watermarked_requests_refused_with_503(
    live: Live,
) -> None:
    world, upstream = live.world, live.upstream
    assert ask(world.client())  # served, watermarked
    assert "vllm_xargs" in upstream.bodies[-1]
    upstream.processor = False  # vLLM restarted without --logits-processors
    guard = live.engine.guard
    assert guard is not None
    wait_for(lambda: guard.verdict is Verdict.MISSING, "the periodic probe saw nothing")
    served = len(upstream.bodies)
    before = world.balance()
    client = world.client()
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as e:
            ask(client, stream)
        assert e.value.status_code == 503
        assert "watermark" in e.value.message
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt="3 + 4 =", max_tokens=4)
    assert e.value.status_code == 503
    assert len(upstream.bodies) == served  # nothing forwarded to be served unmarked
    assert world.balance() == before and world.held() == 0  # and nothing charged
    assert ask(world.client(live.unmarked_key))  # a plan without watermark is still served
    upstream.processor = True  # restarted with it
    wait_for(lambda: guard.verdict is Verdict.MARKS, "the probe did not see it back")
    assert ask(client)
    assert "vllm_xargs" in upstream.bodies[-1]


def test_a_connection_broken_off_makes_the_next_watermarked_request_ask_again(
    live: Live,
) -> None:
    guard = live.engine.guard
    assert guard is not None and guard.verdict is Verdict.MARKS
    guard.forget()  # what a broken-off upstream connection does
    live.upstream.processor = False
    probes = live.upstream.probes
    with pytest.raises(openai.APIStatusError) as e:
        ask(live.world.client())
    assert e.value.status_code == 503
    assert live.upstream.probes > probes


# --- what the probe believes ----------------------------------------------------------------


def answering(status: int, payload: Any) -> Starlette:
    async def complete(request: Request) -> Response:
        await request.body()
        return JSONResponse(payload, status_code=status)

    return Starlette(routes=[Route("/v1/completions", complete, methods=["POST"])])


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "code": 400}}


@pytest.mark.parametrize(
    ("status", "payload", "verdict"),
    [
        (400, error(REFUSAL), Verdict.MARKS),  # vLLM with the processor
        (200, {"choices": [{"text": "x", "index": 0}]}, Verdict.MISSING),  # it generated
        # another server refusing the field, or one echoing the arguments back in its refusal
        (400, error("Unrecognized request argument supplied: vllm_xargs"), Verdict.MISSING),
        (400, error(f"bad vllm_xargs: {json.dumps(PROBE_XARGS)}"), Verdict.MISSING),
        (422, {"detail": "avocado_watermark_probe"}, Verdict.MISSING),
        (404, error("The model `fake` does not exist."), Verdict.UNKNOWN),
        (500, error(REFUSAL), Verdict.UNKNOWN),
        (401, error("Unauthorized"), Verdict.UNKNOWN),
    ],
)
def test_the_probe_believes_only_the_processors_own_refusal(
    status: int, payload: Any, verdict: Verdict
) -> None:
    async def ask_once(url: str) -> Verdict:
        async with aiohttp.ClientSession() as session:
            return await probe(session, url, MODEL)

    with run_server(answering(status, payload)) as url:  # type: ignore[arg-type]
        assert asyncio.run(ask_once(url)) is verdict


def test_an_upstream_not_answering_is_unknown_and_its_watermarked_requests_get_503(
    tmp_path: Path,
) -> None:
    """Not reachable at start-up (vLLM still loading): the gateway starts, and asks again with
    each watermarked request; none is forwarded unchecked."""
    url, billing = ledger(tmp_path)
    key_id, key = billing.create_key("acme")
    settings = ServeSettings(upstream_url="http://127.0.0.1:9/v1", model_name=MODEL,
                             database_url=url, secret=SECRET)  # fmt: skip
    with run_server(create_app(settings, billing=billing)) as base_url:
        world = World(base_url, billing, MODEL, key, key_id)
        before = world.balance()
        for _ in range(2):  # each asks again, and is refused again
            with pytest.raises(openai.APIStatusError) as e:
                ask(world.client())
            assert e.value.status_code == 503
            assert "could not be reached" in e.value.message
        assert world.balance() == before and world.held() == 0
        for client in world.clients:
            client.close()
    billing.close()
