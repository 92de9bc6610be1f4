"""A hostile (or just broken) OpenAI-compatible endpoint on loopback, for the harvest's defences.

It answers well-formed chat completions with made-up answers (no model: the answer is always
"42", spelled by the tokens "4" and "2", with top-k log-probabilities), except for the
prompts it is told to attack, which get one of the ``MODES`` below: log-probabilities that are
not log-probabilities, wrong types, lone surrogates, absurd usage, bodies that never end or
drip a byte at a time, HTML that echoes the request's headers (the API key with them).

    with serve_hostile(Hostility("nan_logprob", bad_prompts={"What is 2 + 3?"})) as server:
        server.base_url   # http://127.0.0.1:<port>/v1
        server.headers    # the headers of every chat request, as received
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

Answer = dict[str, Any]

JSON_MODES: dict[str, Callable[[Answer], None]] = {}
"""Modes that send one complete JSON body, made by changing a good answer in place."""


def _mode(name: str) -> Callable[[Callable[[Answer], None]], Callable[[Answer], None]]:
    def register(change: Callable[[Answer], None]) -> Callable[[Answer], None]:
        JSON_MODES[name] = change
        return change

    return register


def _first(answer: Answer) -> dict[str, Any]:
    return answer["choices"][0]


@_mode("good")
def _good(answer: Answer) -> None:
    pass


@_mode("nan_logprob")
def _nan(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][0]["logprob"] = float("nan")


@_mode("inf_logprob")
def _inf(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][1]["top_logprobs"][1]["logprob"] = float("inf")


@_mode("minus_inf_logprob")
def _minus_inf(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][1]["top_logprobs"][-1]["logprob"] = float("-inf")


@_mode("huge_logprob")
def _huge(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][0]["logprob"] = 1000.0


@_mode("positive_logprob")
def _positive(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][1]["top_logprobs"][0]["logprob"] = 0.5


@_mode("tiny_positive_logprob")
def _tiny_positive(answer: Answer) -> None:
    """Rounding in a server's log-softmax: accepted, stored as 0."""
    entry = _first(answer)["logprobs"]["content"][0]
    entry["logprob"] = entry["top_logprobs"][0]["logprob"] = 1e-7


@_mode("string_logprob")
def _string_logprob(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][0]["logprob"] = "-0.25"


@_mode("token_int")
def _token_int(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][0]["token"] = 4


@_mode("content_list")
def _content_list(answer: Answer) -> None:
    _first(answer)["message"]["content"] = [{"type": "text", "text": "42"}]


@_mode("huge_usage")
def _huge_usage(answer: Answer) -> None:
    answer["usage"]["completion_tokens"] = 3e9


@_mode("negative_usage")
def _negative_usage(answer: Answer) -> None:
    answer["usage"]["prompt_tokens"] = -5


@_mode("usage_over_max_tokens")
def _usage_over(answer: Answer) -> None:
    answer["usage"]["completion_tokens"] = 1_000_000


@_mode("surrogate_content")
def _surrogate_content(answer: Answer) -> None:
    _first(answer)["message"]["content"] = "4\ud8002"


@_mode("surrogate_token")
def _surrogate_token(answer: Answer) -> None:
    _first(answer)["logprobs"]["content"][0]["top_logprobs"][1]["token"] = "\udc80"


@_mode("long_text")
def _long_text(answer: Answer) -> None:
    """200 KB of text for an answer of at most ``max_tokens`` tokens (under the byte cap)."""
    _first(answer)["message"]["content"] = "42" * 100_000


@_mode("too_many_positions")
def _too_many_positions(answer: Answer) -> None:
    content = _first(answer)["logprobs"]["content"]
    content.extend([dict(content[0]) for _ in range(500)])


@_mode("no_choices")
def _no_choices(answer: Answer) -> None:
    answer["choices"] = []


@_mode("choices_not_a_list")
def _choices_not_a_list(answer: Answer) -> None:
    answer["choices"] = {"0": answer["choices"][0]}


@_mode("index_string")
def _index_string(answer: Answer) -> None:
    answer["choices"].append({**answer["choices"][0], "index": "one"})


STREAM_MODES = (
    "endless", "drip", "huge_body", "echo_html", "echo_error", "markup_error", "deep_json",
)  # fmt: skip
"""Modes that are not one JSON answer."""
MODES = (*JSON_MODES, *STREAM_MODES)


@dataclass
class Hostility:
    mode: str = "good"
    bad_prompts: set[str] | None = None
    """Last user messages that get ``mode`` (``None``: every request); the others are good."""
    drip_every_s: float = 0.3
    """``drip``: one byte per this many seconds."""
    huge_bytes: int = 8 << 20
    """``huge_body``: a complete, valid JSON answer of this many bytes (Content-Length set)."""


@dataclass
class HostileServer:
    hostility: Hostility
    base_url: str = ""
    requests: int = 0
    attacked: int = 0
    """Requests that got the hostile mode."""
    headers: list[dict[str, str]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            await _send(send, 404, b'{"error": {"message": "not found"}}')
            return
        self.requests += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.headers.append(headers)
        self.queries.append(scope["query_string"].decode("latin-1"))
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        opts = self.hostility
        prompt = body["messages"][-1]["content"]
        hostile = opts.bad_prompts is None or prompt in opts.bad_prompts
        mode = opts.mode if hostile else "good"
        self.attacked += mode != "good"
        answer = _answer(body, self.requests)
        if mode in JSON_MODES:
            JSON_MODES[mode](answer)
            await _send(send, 200, json.dumps(answer).encode())  # NaN/Infinity as Python writes
        elif mode == "echo_html":
            await _send(send, 200, _echo(headers), "text/html")
        elif mode == "echo_error":
            await _send(send, 502, _echo(headers), "text/html")
        elif mode == "markup_error":
            error = {"error": {"message": "[/red][bold]boom\x1b[2J\x07 \ud800", "type": "x"}}
            await _send(send, 400, json.dumps(error).encode())
        elif mode == "deep_json":  # nested deeper than Python's parser recurses; 200 KB
            await _send(send, 200, b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        elif mode == "huge_body":
            data = json.dumps(answer).encode()
            padded = data[:-1] + b" " * (opts.huge_bytes - len(data)) + b"}"
            await _send(send, 200, padded)
        elif mode == "endless":
            await _start(send, 200)
            await send({"type": "http.response.body", "body": b'{"choices": [', "more_body": True})
            chunk = b" " * 65536
            while True:  # until the client hangs up (uvicorn then makes send a no-op)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0)
                if _gone(send):
                    return
        elif mode == "drip":
            await _start(send, 200)
            for byte in json.dumps(answer).encode():
                await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
                await asyncio.sleep(opts.drip_every_s)
                if _gone(send):
                    return
            await send({"type": "http.response.body", "body": b""})
        else:
            raise ValueError(f"unknown mode {mode!r}")


def _gone(send: Any) -> bool:
    cycle = getattr(send, "__self__", None)
    return bool(getattr(cycle, "disconnected", False))


def _entry(token: str, logprob: float, k: int) -> dict[str, Any]:
    tops = [(token, logprob), *((f"<{i}>", -2.0 - i) for i in range(max(k - 1, 0)))]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops[:k]
        ],
    }


def _answer(body: dict[str, Any], index: int) -> Answer:
    k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
    n = int(body.get("n") or 1)
    logprobs = {"content": [_entry("4", -0.25, k), _entry("2", -0.5, k)]} if k else None
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "42"},
            "finish_reason": "stop",
            "logprobs": json.loads(json.dumps(logprobs)),  # a copy per choice
        }
        for i in range(n)
    ]
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": choices,
        "usage": {"prompt_tokens": 7, "completion_tokens": 2 * n, "total_tokens": 7 + 2 * n},
    }


def _echo(headers: dict[str, str]) -> bytes:
    """A debug page that shows the request's headers, Authorization first."""
    first = sorted(headers.items(), key=lambda kv: kv[0] != "authorization")
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in first)
    return f"<html><table>{rows}</table></html>".encode()


async def _start(send: Any, status: int, content_type: str = "application/json") -> None:
    headers = [(b"content-type", content_type.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send(
    send: Any, status: int, body: bytes, content_type: str = "application/json"
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serve_hostile(hostility: Hostility | None = None) -> Iterator[HostileServer]:
    """Serve on 127.0.0.1 and a free port, in a background thread, until the block ends."""
    app = HostileServer(hostility or Hostility())
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http="h11", ws="none", lifespan="off", log_level="critical"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hostile-endpoint", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the hostile endpoint did not start")
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
