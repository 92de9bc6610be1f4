"""Money under retries, hang-ups and concurrency: charged once, for what was produced, and
never below zero — through the HTTP server, on a SQLite ledger and on a PostgreSQL one."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from serve_helpers import SECRET, World, charge, hang_up_after, run_server

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve import ServeSettings, create_app, local_engine
from avocado_llm.serve.local_engine import LocalEngine

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def test_idempotent_retry_replays_the_answer_and_is_not_charged_again(world: World) -> None:
    client = world.client()
    headers = {"Idempotency-Key": "order-42"}
    before = world.balance()
    first = client.chat.completions.with_raw_response.create(
        model=world.model, messages=QUESTION, max_tokens=10, temperature=1.0,
        extra_headers=headers,
    )  # fmt: skip
    charged = before - world.balance()
    retry = client.chat.completions.with_raw_response.create(
        model=world.model, messages=QUESTION, max_tokens=10, temperature=1.0,
        extra_headers=headers,
    )  # fmt: skip
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.http_response.content == first.http_response.content
    assert retry.status_code == first.status_code == 200
    assert before - world.balance() == charged > 0
    assert len(world.billing.usage(world.account)) == 1
    with pytest.raises(openai.ConflictError) as e:  # same key, another body
        client.chat.completions.create(
            model=world.model, messages=QUESTION, max_tokens=11, extra_headers=headers
        )
    assert e.value.status_code == 409
    assert before - world.balance() == charged


def test_idempotent_stream_is_replayed_as_the_same_stream(world: World) -> None:
    body = {"model": world.model, "messages": QUESTION, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    headers = {"Authorization": f"Bearer {world.key}", "Idempotency-Key": "stream-1"}
    first = httpx.post(f"{world.base_url}/chat/completions", json=body, headers=headers)
    again = httpx.post(f"{world.base_url}/chat/completions", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.content == first.content and first.text.endswith("data: [DONE]\n\n")
    assert len(world.billing.usage(world.account)) == 1


def test_a_stream_cut_by_the_client_is_charged_for_what_was_produced(world: World) -> None:
    max_tokens = 200
    before = world.balance()
    stream = world.client().chat.completions.create(
        model=world.model, messages=QUESTION, max_tokens=max_tokens, temperature=1.0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    hang_up_after(stream, 3)
    world.wait_settled()
    [event] = world.billing.usage(world.account)
    assert event["status"] == "cancelled"
    assert 3 <= event["completion_tokens"] < max_tokens
    charged = before - world.balance()
    assert charged == charge(event["prompt_tokens"], event["completion_tokens"])
    assert charged < charge(event["prompt_tokens"], max_tokens)


def test_a_stream_the_engine_fails_midway_is_charged_for_what_was_sent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process engine fails after a few tokens of a stream (a fault injected into its
    decode step): the client saw that text, so it is billed (status "cancelled"), not given
    away; the stream ends with an error event and no hold stays open."""
    real = local_engine.decode

    def failing(model, tokenizer, rows, eos_ids, on_step):  # type: ignore[no-untyped-def]
        steps = 0

        def step(live):  # type: ignore[no-untyped-def]
            nonlocal steps
            on_step(live)
            steps += 1
            if steps == 4:
                raise RuntimeError("injected fault in the decode step")

        real(model, tokenizer, rows, eos_ids, step)

    monkeypatch.setattr(local_engine, "decode", failing)
    before = world.balance()
    body = {"model": world.model, "messages": QUESTION, "max_tokens": 50, "stream": True,
            "ignore_eos": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {world.key}"}
    answer = httpx.post(f"{world.base_url}/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200
    events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
    assert '"error"' in events[-1] and "[DONE]" not in events
    world.wait_settled()
    [event] = world.billing.usage(world.account)
    assert event["status"] == "cancelled" and event["completion_tokens"] == 4
    assert before - world.balance() == charge(event["prompt_tokens"], 4) > 0
    assert world.billing.account_info(world.account)["held"] == 0


def chat_scope(key: str, spec: str) -> dict:
    """The ASGI scope of ``POST /v1/chat/completions`` with ``key`` (the app called directly,
    so that a test decides when the client leaves)."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {key}".encode())],
    }  # fmt: skip


@pytest.mark.parametrize("spec", ["2.4", "2.3"])  # send raises / a disconnect is heard first
def test_a_client_gone_before_its_stream_starts_leaves_no_hold(
    engine: LocalEngine, billing: Billing, database_url: str, zoo_dir: Path, spec: str,
) -> None:  # fmt: skip
    """The client hangs up between the hold and the response's first byte: the stream's
    generator never starts (closing it runs none of its code), and the request is still
    settled — its hold released or charged for what the engine produced, never left open."""
    config = ServeSettings(model_dir=zoo_dir / "qwen-tiny", model_name="qwen-tiny",
                           secret=SECRET, database_url=database_url)  # fmt: skip
    app = create_app(config, engine=engine, billing=billing)
    _, key = billing.create_key("acme")
    before = billing.balance("acme")
    body = (
        b'{"model": "qwen-tiny", "stream": true, "max_tokens": 50, '
        b'"messages": [{"role": "user", "content": "What is 3 + 4?"}]}'
    )
    scope = chat_scope(key, spec)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if spec == "2.4":  # uvicorn raises an OSError on a closed connection
            raise OSError("the client is gone")
        await asyncio.sleep(30)  # a slow socket: the disconnect is heard first, and cancels

    async def call() -> None:
        async with app.router.lifespan_context(app):
            with contextlib.suppress(Exception):
                await app(scope, receive, send)

    asyncio.run(call())
    assert not any(m.get("body") for m in sent)  # the client got nothing
    assert billing.open_holds() == []
    events = billing.usage("acme")
    assert len(events) <= 1  # settled for what was produced, or released with no event
    charged = before - billing.balance("acme")
    expected = charge(events[0]["prompt_tokens"], events[0]["completion_tokens"]) if events else 0
    assert charged == expected


class SlowHolds(Billing):
    """The real ledger, with a hold that takes half a second (a busy database)."""

    def __init__(self, database_url: str, secret: str) -> None:
        super().__init__(database_url, secret)
        self.entered, self.placed = threading.Event(), threading.Event()

    def hold(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.entered.set()
        time.sleep(0.5)
        try:
            return super().hold(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.placed.set()


def test_a_request_cancelled_while_its_hold_is_placed_leaves_no_hold(
    engine: LocalEngine, database_url: str, zoo_dir: Path
) -> None:
    """The server cancels a request (as Starlette does, through anyio) while its hold is
    being placed in a worker thread: the ledger call finishes (it is not abandoned), the
    cancellation lands at the next await, where the request's Meter releases the hold. (A
    forced shutdown cancels tasks natively instead; the holds it leaves are released at the
    next start-up.)"""
    billing = SlowHolds(database_url, SECRET)
    billing.migrate()
    billing.set_price("qwen-tiny", 1, 1, 0)
    billing.create_account("acme", MICRO)
    _, key = billing.create_key("acme")
    config = ServeSettings(model_dir=zoo_dir / "qwen-tiny", model_name="qwen-tiny",
                           secret=SECRET, database_url=database_url)  # fmt: skip
    app = create_app(config, engine=engine, billing=billing)
    body = (
        b'{"model": "qwen-tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    )
    scope = chat_scope(key, "2.4")
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        return None

    async def call() -> None:
        async with app.router.lifespan_context(app), anyio.create_task_group() as group:
            group.start_soon(app, scope, receive, send)
            while not billing.entered.is_set():
                await asyncio.sleep(0.01)
            group.cancel_scope.cancel()  # inside the half-second hold

    try:
        asyncio.run(call())
        assert billing.placed.wait(10)  # the hold was placed (whatever became of the request)
        assert billing.open_holds() == []
        assert billing.balance("acme") == MICRO
        assert billing.usage("acme") == []
    finally:
        billing.close()


def test_concurrent_requests_never_overdraw_and_are_each_charged_once(world: World) -> None:
    """200 requests at once against credit for 50 worst cases."""
    prompt_tokens = 20  # of QUESTION in qwen-tiny's chat template
    max_tokens = 40
    worst = charge(prompt_tokens, max_tokens)
    world.billing.create_account("tight", 50 * worst)
    _, key = world.new_key(account="tight")
    lowest = [world.balance("tight")]
    done = threading.Event()

    def watch() -> None:  # the balance as other readers see it, all along
        while not done.wait(0.01):
            lowest[0] = min(lowest[0], world.balance("tight"))

    async def one(client: openai.AsyncOpenAI, i: int) -> object:
        try:
            return await client.chat.completions.create(
                model=world.model, messages=QUESTION, max_tokens=max_tokens, temperature=1.0,
                seed=i, extra_body={"ignore_eos": i % 2 == 0},
            )  # fmt: skip
        except openai.RateLimitError as e:
            return e

    async def all_at_once() -> list[object]:
        async with world.async_client(key) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = asyncio.run(all_at_once())
    finally:
        done.set()
        watcher.join()
    answers = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answers) + len(refused) == 200
    assert len(answers) >= 50 and refused
    assert all(e.code == "insufficient_quota" for e in refused)
    assert lowest[0] >= 0 and world.balance("tight") >= 0 and world.held("tight") == 0
    events = {e["request_id"]: e for e in world.billing.usage("tight")}
    assert set(events) == {a.id for a in answers}  # every answer has exactly one usage event
    assert len(world.billing.usage("tight")) == len(answers)
    total = 0
    for a in answers:
        assert a.usage.prompt_tokens == prompt_tokens
        expected = charge(a.usage.prompt_tokens, a.usage.completion_tokens)
        assert events[a.id]["charge"] == expected
        total += expected
    assert total == 50 * worst - world.balance("tight")


def test_start_up_releases_only_holds_older_than_stale_hold_after_s(
    engine: LocalEngine, billing: Billing, database_url: str, zoo_dir: Path
) -> None:
    """Holds of no live server (a crash's) are released at start-up once older than
    ``stale_hold_after_s``."""
    _, key = billing.create_key("acme")
    info = billing.authenticate(key)
    billing.hold(info, engine.model, 10, 10, "in-flight-elsewhere")
    held = billing.account_info("acme")["held"]
    assert held > 0

    def settings(**overrides: float) -> ServeSettings:
        model = engine.model
        return ServeSettings(model_dir=zoo_dir / model, model_name=model, secret=SECRET,
                             database_url=database_url, **overrides)  # fmt: skip

    patient = settings(stale_hold_after_s=3600)
    with run_server(create_app(patient, engine=engine, billing=billing)):
        pass
    assert billing.account_info("acme")["held"] == held  # too recent to be a crash's

    eager = settings()  # 0: every open hold
    with run_server(create_app(eager, engine=engine, billing=billing)):
        pass
    assert billing.account_info("acme")["held"] == 0
    assert billing.balance("acme") == 5 * MICRO


def test_start_up_leaves_the_holds_of_a_live_server_alone(
    engine: LocalEngine, billing: Billing, database_url: str, zoo_dir: Path
) -> None:
    """Holds belong to the lease of the server that placed them: another server's start-up
    does not release them while that server lives (``stale_hold_after_s`` 0), and does once it
    has shut down (what it left open is a crash's)."""
    _, key = billing.create_key("acme")
    info = billing.authenticate(key)
    assert info is not None
    config = ServeSettings(model_dir=zoo_dir / engine.model, model_name=engine.model,
                           secret=SECRET, database_url=database_url)  # fmt: skip
    first = create_app(config, engine=engine, billing=billing)
    with run_server(first):
        lease = first.state.services.lease
        billing.hold(info, engine.model, 10, 10, "served-by-first", server_id=lease.server_id)
        held = billing.account_info("acme")["held"]
        with run_server(create_app(config, engine=engine, billing=billing)):
            pass
        assert billing.account_info("acme")["held"] == held > 0  # the first server lives
    with run_server(create_app(config, engine=engine, billing=billing)):
        pass
    assert billing.account_info("acme")["held"] == 0
    assert billing.balance("acme") == 5 * MICRO
