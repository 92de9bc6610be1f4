"""An OpenAI-compatible endpoint on loopback that answers with a real local teacher, with faults
on demand, so that the endpoint teacher is tested over real HTTP against a real model.

    with serve_teacher(local_teacher, EndpointOptions(fail_first_n_with_429=2)) as server:
        server.base_url  # http://127.0.0.1:<port>/v1
        server.requests  # chat-completion requests received so far
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from avocado_llm.teachers.base import Completion, SamplingParams, TokenLogprobs
from avocado_llm.teachers.hf import LocalTeacher


@dataclass
class EndpointOptions:
    model: str = "qwen-tiny"
    api_key: str | None = None
    """Bearer key the server requires (``None``: no check)."""
    fail_first_n_with_429: int = 0
    retry_after: str | None = "0"
    """``Retry-After`` sent with the 429s (``None``: no header)."""
    fail_first_n_with_503: int = 0
    drop_first_n: int = 0
    """Close the connection without any response (the client sees a dropped connection)."""
    always_400: bool = False
    delay_s: float = 0.0
    """Sleep this long in every request, so that concurrent requests overlap."""
    reasoning: str | None = None
    """Add this reasoning text to every message..."""
    reasoning_field: str = "reasoning_content"
    """...under this name (vLLM: ``reasoning_content``; newer servers: ``reasoning``)."""
    ignore_n: bool = False
    """Answer one choice whatever ``n`` asks, like some servers do."""


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _logprobs(lps: list[TokenLogprobs]) -> dict[str, Any]:
    content = []
    for lp in lps:
        top = [_entry(t, v) for t, v in zip(lp.top_tokens, lp.top_logprobs, strict=True)]
        content.append({**_entry(lp.token, lp.logprob), "top_logprobs": top})
    return {"content": content}


class EndpointServer:
    """The app and its counters; counters change on the server's loop only."""

    def __init__(self, teacher: LocalTeacher, options: EndpointOptions) -> None:
        self.teacher = teacher
        self.options = options
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._model_lock = threading.Lock()  # one generation at a time: the CPU is shared
        self.api = FastAPI()
        self.api.post("/v1/chat/completions")(self.chat_completions)
        self.api.get("/v1/models")(self.models)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Counts chat requests and drops the first ``drop_first_n`` before FastAPI sees them
        (FastAPI can only answer; dropping needs the raw connection)."""
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            self.requests += 1
            scope.setdefault("state", {})["index"] = self.requests  # 1-based arrival order
            if self.requests <= self.options.drop_first_n:
                await _drop_connection(send)
                return
        await self.api(scope, receive, send)

    async def models(self) -> dict[str, Any]:
        model = {"id": self.options.model, "object": "model", "created": 0, "owned_by": "avocado"}
        return {"object": "list", "data": [model]}

    async def chat_completions(self, request: Request) -> JSONResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.options.delay_s)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> JSONResponse:
        opts = self.options
        seen = request.state.index - opts.drop_first_n  # faults come one after another
        auth = request.headers.get("authorization")
        if opts.api_key is not None and auth != f"Bearer {opts.api_key}":
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        if seen <= opts.fail_first_n_with_429:
            response = _error(
                429, "Rate limit reached, slow down.", "requests", "rate_limit_exceeded"
            )
            if opts.retry_after is not None:
                response.headers["Retry-After"] = opts.retry_after
            return response
        if seen <= opts.fail_first_n_with_429 + opts.fail_first_n_with_503:
            return _error(503, "The server is overloaded.", "server_error")
        if opts.always_400:
            return _error(
                400, "Injected bad request: 'messages' is malformed.", "invalid_request_error"
            )
        body = await request.json()
        self.bodies.append(body)
        if body.get("model") != opts.model:
            return _error(
                404,
                f"The model {body.get('model')!r} does not exist.",
                "invalid_request_error",
                "model_not_found",
            )
        k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        if k > 20:
            return _error(400, "top_logprobs must be at most 20.", "invalid_request_error")
        params = SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 16),
            n=1 if opts.ignore_n else int(body.get("n", 1)),
            top_logprobs=k,
            seed=int(body.get("seed") or 0),
        )
        [completions] = await asyncio.to_thread(self._generate, body["messages"], params)
        return JSONResponse(self._response(completions, bool(body.get("logprobs"))))

    def _generate(
        self, messages: list[dict[str, str]], params: SamplingParams
    ) -> list[list[Completion]]:
        with self._model_lock:
            return self.teacher.generate_sync([messages], params)

    def _response(self, completions: list[Completion], logprobs: bool) -> dict[str, Any]:
        choices = []
        for i, c in enumerate(completions):
            message = {"role": "assistant", "content": c.text}
            if self.options.reasoning is not None:
                message[self.options.reasoning_field] = self.options.reasoning
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "finish_reason": c.finish_reason,
                    "logprobs": _logprobs(c.logprobs or []) if logprobs else None,
                }
            )
        prompt = completions[0].prompt_tokens
        generated = sum(c.completion_tokens for c in completions)
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.options.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": generated,
                "total_tokens": prompt + generated,
            },
        }


async def _drop_connection(send: Any) -> None:
    """Abort the TCP connection under this request. uvicorn's h11 ``send`` is a bound method of
    the request cycle, which holds the transport; once the loss is noticed uvicorn sends
    nothing more (no 500), so the client sees the server hang up."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot reach the connection to drop it (not uvicorn's h11 protocol?)")
    transport.abort()
    for _ in range(100):  # connection_lost runs on a later loop iteration
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001)


@contextmanager
def serve_teacher(
    teacher: LocalTeacher, options: EndpointOptions | None = None
) -> Iterator[EndpointServer]:
    """Serve ``teacher`` on 127.0.0.1 and a free port, in a background thread, until the block
    ends."""
    app = EndpointServer(teacher, options or EndpointOptions())
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http="h11", ws="none", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="endpoint-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the endpoint server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    app.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
