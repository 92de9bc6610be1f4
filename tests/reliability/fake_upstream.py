"""A tiny, fast OpenAI-compatible server for the reliability tests: the upstream that
``avocado serve --upstream`` forwards to, so that the tests exercise the server, the ledger and
crashes without spending the CPU on a model.

    python fake_upstream.py PORT [DELAY_S]

It answers ``/v1/chat/completions`` and ``/v1/completions`` as a stream (what upstream mode
always asks for): a role chunk (legacy ``echo``: the prompts), one chunk per token of every
choice (``DELAY_S`` apart, so that requests are in flight when a test kills the server in
front), a usage chunk and ``[DONE]``.
Every prompt gets ``tokens_for(text)`` tokens, at most ``max_tokens`` (finish reason ``stop``, or
``length`` when ``max_tokens`` cut it); the usage is the truth the gateway must bill. Listens on
127.0.0.1 only. A malformed ``vllm_xargs`` watermark is a 400 naming it, as vLLM running
Avocado's processor answers (the gateway's start-up probe expects it).

A prompt (or the last message) may end with a directive that makes the fake misbehave, for the
tests of a lying or failing upstream (``lie(...)`` writes one):

    #fake:usage=<json>          the usage chunk's object is <json> instead of the truth
    #fake:usage=none            no usage chunk at all
    #fake:status=<code>:<text>  answer HTTP <code> with <text> as the error's message
    #fake:midstream=<text>      an error event with <text> after the first token
    #fake:toolcall=<json>       the first piece of a function call is <json> (a tool_calls list)

Tool calling and structured outputs, as vLLM streams them: a request with ``tools`` (and a
``tool_choice`` other than ``none``) whose last message is not a ``tool`` message gets a call of
the named function, else of the first tool (and of the second too when ``tool_choice`` is
``required`` and ``parallel_tool_calls`` is not false): per call a piece with its id
(``chatcmpl-tool-…``), type and name, then its arguments (JSON made from the parameters' schema)
in pieces of up to 8 characters, finish_reason ``tool_calls``. A ``response_format`` of
``json_schema`` gets a JSON value made from its schema, ``json_object`` ``{"answer": "w0"}``, in
pieces of up to 8 characters. Each piece is one token; an answer longer than ``max_tokens`` is
cut there (finish_reason ``length``). The tools' compact JSON counts as prompt (a token per 4
bytes, as text does).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from avocado_watermark.xargs import from_xargs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "fake"


def tokens_for(text: str) -> int:
    """How many completion tokens the fake model produces for a prompt: 2 to 6."""
    return 2 + hashlib.sha256(text.encode()).digest()[0] % 5


def prompt_tokens(text: str) -> int:
    return 1 + len(text.encode()) // 4


def _texts(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        return ["\n".join(str(m.get("content") or "") for m in body["messages"])]
    prompt = body.get("prompt", "")
    return [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]


DIRECTIVE = "#fake:"


def lie(text: str, directive: str) -> str:
    """``text`` with a directive for this fake (see the module's docstring)."""
    return f"{text} {DIRECTIVE}{directive}"


def _directive(texts: list[str]) -> tuple[str, str]:
    """``(name, value)`` of the directive at the end of the last text, or ``("", "")``."""
    _, found, rest = (texts[-1] if texts else "").rpartition(DIRECTIVE)
    name, _, value = rest.partition("=") if found else ("", "", "")
    return name, value


def _logprobs(chat: bool, token: str, top: int) -> dict[str, Any]:
    alternatives = [(f"alt{i}", -1.0 - i) for i in range(top)]
    if chat:
        entry = {
            "token": token,
            "logprob": -0.5,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives
            ],
        }
        return {"content": [entry]}
    return {
        "tokens": [token],
        "token_logprobs": [-0.5],
        "top_logprobs": [dict(alternatives)],
        "text_offset": [0],
    }


def sample(schema: Any) -> Any:
    """A JSON value that ``schema`` (a simple JSON Schema) accepts; ``{}`` for a schema this
    fake cannot read (fuzzed ones)."""
    try:
        return _sample(schema)
    except (TypeError, AttributeError, IndexError, KeyError, RecursionError):
        return {}


def _sample(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _sample(sub) for name, sub in props.items()}
    if kind == "array":
        return [_sample(schema.get("items") or {"type": "string"})]
    return {"string": "Paris", "integer": 7, "number": 2.5, "boolean": True}.get(kind)


def _split(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _special(body: dict[str, Any], max_tokens: int) -> tuple[list[dict[str, Any]], str] | None:
    """The deltas (one a token) and finish reason of a tool-call or JSON answer; None: text."""
    tools, choice = body.get("tools") or [], body.get("tool_choice", "auto")
    last = (body.get("messages") or [{}])[-1]
    texts = _texts(body)
    pieces: list[dict[str, Any]] = []
    if tools and choice != "none" and last.get("role") != "tool":
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        chosen = [t for t in tools if t["function"]["name"] == named] or tools[:1]
        if choice == "required" and body.get("parallel_tool_calls") is not False:
            chosen = tools[:2]
        for k, tool in enumerate(chosen):
            function = tool["function"]
            call_id = "chatcmpl-tool-" + hashlib.sha256(f"{texts}{k}".encode()).hexdigest()[:24]
            first = {"id": call_id, "type": "function", "index": k,
                     "function": {"name": function["name"]}}  # fmt: skip
            directive, value = _directive(texts)
            if directive == "toolcall" and k == 0:
                pieces.append({"tool_calls": json.loads(value)})
            else:
                pieces.append({"tool_calls": [first]})
            arguments = json.dumps(sample(function.get("parameters") or {"type": "object"}))
            pieces += [{"tool_calls": [{"index": k, "function": {"arguments": a}}]}
                       for a in _split(arguments)]  # fmt: skip
        finish = "tool_calls"
    elif (body.get("response_format") or {}).get("type") in ("json_schema", "json_object"):
        fmt = body["response_format"]
        value = sample(fmt["json_schema"].get("schema")) if "json_schema" in fmt else None
        text = json.dumps(value) if "json_schema" in fmt else '{"answer": "w0"}'
        pieces = [{"content": piece} for piece in _split(text)]
        finish = "stop"
    else:
        return None
    if len(pieces) > max_tokens:
        return pieces[:max_tokens], "length"
    return pieces, finish


def _echoed(index: int, text: str, alone: bool, logprobs: bool) -> dict[str, Any]:
    """A legacy ``echo`` chunk, as vLLM sends it first: the prompt, with its log-probabilities
    (the first token's null) when asked; the choice's last chunk when ``max_tokens`` is 0."""
    choice: dict[str, Any] = {"index": index, "text": text,
                              "finish_reason": "length" if alone else None}  # fmt: skip
    if logprobs:
        choice["logprobs"] = {"tokens": [text], "token_logprobs": [None],
                              "top_logprobs": [None], "text_offset": [0]}  # fmt: skip
    return choice


def make_app(delay_s: float) -> Starlette:
    async def complete(request: Request) -> Response:
        body = await request.json()
        if "vllm_xargs" in body:  # as vLLM with Avocado's processor: a malformed watermark is a 400
            try:
                from_xargs(body["vllm_xargs"])
            except ValueError as e:
                error = {"message": str(e), "type": "BadRequestError", "param": None, "code": 400}
                return JSONResponse({"error": error}, status_code=400)
        chat = request.url.path.endswith("/chat/completions")
        texts = _texts(body)
        n = int(body.get("n") or 1)
        max_tokens = int(16 if body.get("max_tokens") is None else body["max_tokens"])
        want_logprobs = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        special = [_special(body, max_tokens) if chat else None for _ in texts]
        counts = [
            len(s[0]) if s else min(max_tokens, tokens_for(t))
            for s, t in zip(special, texts, strict=True)
        ]
        tools = json.dumps(body["tools"], separators=(",", ":")) if body.get("tools") else ""
        usage = {
            "prompt_tokens": sum(prompt_tokens(t) for t in texts) + len(tools.encode()) // 4,
            "completion_tokens": n * sum(counts),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        kind = "chat.completion.chunk" if chat else "text_completion"
        directive, value = _directive(texts)
        if directive == "status":
            code, _, message = value.partition(":")
            error = {"message": message, "type": "internal", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=int(code))
        reported: Any = usage
        if directive == "usage":
            reported = None if value == "none" else json.loads(value)

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
            chunk = {"id": "fake-1", "object": kind, "created": 0, "model": MODEL}
            chunk |= {"choices": choices, **(extra or {})}
            return f"data: {json.dumps(chunk)}\n\n"

        async def stream() -> AsyncIterator[str]:
            if chat:
                yield event([{"index": i, "delta": {"role": "assistant", "content": ""}}
                             for i in range(n)])  # fmt: skip
            elif body.get("echo"):  # legacy echo: each choice's prompt first
                yield event([_echoed(p * n + j, t, counts[p] == 0, want_logprobs)
                             for p, t in enumerate(texts) for j in range(n)])  # fmt: skip
            for step in range(max(counts)):
                if delay_s:
                    await asyncio.sleep(delay_s)
                choices = []
                for p, count in enumerate(counts):
                    if step >= count:
                        continue
                    for j in range(n):
                        token = f" w{step}"
                        last = step == count - 1
                        choice: dict[str, Any] = {"index": p * n + j}
                        if special[p] is not None:  # a function call or JSON, as vLLM sends it
                            pieces, finish = special[p]  # type: ignore[misc]
                            choice["delta"] = pieces[step]
                            choice |= {"logprobs": None, "finish_reason": finish if last else None,
                                       "stop_reason": None}  # fmt: skip
                            choices.append(choice)
                            continue
                        if chat:
                            choice["delta"] = {"content": token}
                        else:
                            choice["text"] = token
                        # as vLLM: "stop" at the end of the answer, "length" when max_tokens cut it
                        cut = count == max_tokens
                        choice["finish_reason"] = ("length" if cut else "stop") if last else None
                        if want_logprobs:
                            choice["logprobs"] = _logprobs(chat, token, top)
                        choices.append(choice)
                yield event(choices)
                if directive == "midstream":
                    yield f"data: {json.dumps({'error': {'message': value, 'code': 500}})}\n\n"
                    return
            if reported is not None:
                yield event([], {"usage": reported})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                         "owned_by": "test"}]}
        )  # fmt: skip

    return Starlette(
        routes=[
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


if __name__ == "__main__":
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvicorn.run(make_app(delay), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)  # fmt: skip
