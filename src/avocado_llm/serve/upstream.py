"""Upstream mode: the same keys, limits and metering in front of any OpenAI-compatible server.

Every request is forwarded as a *stream* with ``stream_options.include_usage``, whatever the
client asked, so that the upstream's own ``usage`` (its tokenizer's count) is what we bill,
and so that a client who hangs up closes the upstream connection too (vLLM then aborts the
request). Until the upstream's final usage arrives, each chunk that carries text counts as one
produced token: that is what a client pays for when it leaves mid-stream.

The client is aiohttp's (its HTTP parser is compiled; its pool hands out the most recently
used idle connection): per forwarded request it costs a fraction of httpx's CPU, and the
upstream hop is most of the gateway's own work (``bench/gateway_overhead.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from avocado_llm.serve.engine import (
    Delta,
    EngineError,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    Usage,
)

# A conversation's template adds a few tokens per message around the text; bytes bound the
# text's tokens from above for byte-level tokenizers, which is all a hold needs.
_TEMPLATE_ALLOWANCE = 16


class UpstreamGeneration:
    """One forwarded request, read as the upstream streams it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
        self.usage = Usage(prompt_tokens=0)
        self._session = session
        self._url = url
        self._body = body

    async def __aiter__(self) -> AsyncIterator[Delta]:
        try:
            # Leaving this block before the body's end (the client hung up) closes the
            # connection rather than pooling it: the upstream sees the hang-up.
            async with self._session.post(self._url, json=self._body) as response:
                if response.status != 200:
                    raise _upstream_error(response.status, await response.read())
                done = False
                async for raw in response.content:
                    # After [DONE], read on to the end of the body (nothing more, normally):
                    # a connection left mid-body is closed, not kept alive for the next request.
                    line = raw.strip()
                    if done or not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    for delta in self._read(json.loads(data)):
                        yield delta
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            name = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
            raise EngineError(f"the upstream server failed: {name}: {e}", 502) from e

    def _read(self, chunk: dict[str, Any]) -> list[Delta]:
        if "error" in chunk:
            raise EngineError(f"the upstream server failed: {chunk['error']}", 502)
        deltas = []
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            finish = choice.get("finish_reason")
            if text or finish:
                self.usage.completion_tokens += 1 if text else 0
                logprobs = _logprobs(choice.get("logprobs"))
                deltas.append(Delta(int(choice.get("index", 0)), text, finish, logprobs))
        if usage := chunk.get("usage"):
            self.usage = Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        return deltas

    def cancel(self) -> None:
        """Nothing to do: closing the iteration closes the upstream connection."""

    async def wait_stopped(self) -> None:
        return None


class UpstreamEngine:
    """Forwards to ``base_url`` (e.g. ``http://127.0.0.1:8001/v1``) as ``upstream_model``."""

    def __init__(
        self,
        base_url: str,
        *,
        model_name: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        tokenizer_dir: Path | None = None,
    ) -> None:
        self.model = model_name
        self.upstream_model = upstream_model or model_name
        self.context_length: int | None = None
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=10.0)
        self._tokenizer_dir = tokenizer_dir
        self._tokenizer: Any = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        if self._tokenizer_dir is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self._tokenizer_dir, trust_remote_code=False
            )
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            # no cap on connections (the limits are ours, per key), keep idle ones 60 s
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def chat_prompt(self, messages: list[dict[str, Any]]) -> Prompt:
        if self._tokenizer is not None and self._tokenizer.chat_template:
            try:
                text = self._tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as e:  # jinja raises its own errors for conversations it refuses
                raise ValueError(f"the model's chat template refused the messages: {e}") from e
            tokens = len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            size = sum(len(str(m.get("content") or "").encode()) for m in messages)
            tokens = size + _TEMPLATE_ALLOWANCE * (len(messages) + 1)
        return Prompt(tokens=tokens, messages=messages)

    def text_prompt(self, text: str) -> Prompt:
        if self._tokenizer is not None:
            tokens = len(self._tokenizer(text)["input_ids"])
        else:
            tokens = len(text.encode()) + _TEMPLATE_ALLOWANCE
        return Prompt(tokens=tokens, text=text)

    def generate(self, prompts: Sequence[Prompt], options: SamplingOptions) -> UpstreamGeneration:
        if self._session is None:
            raise EngineError("the upstream engine is not started", status=503)
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": options.max_tokens,
            "n": options.n,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if options.stop:
            body["stop"] = list(options.stop)
        if options.seed is not None:
            body["seed"] = options.seed
        if options.ignore_eos:
            body["ignore_eos"] = True
        chat = prompts[0].messages is not None
        if chat:
            body["messages"] = prompts[0].messages
            if options.logprobs is not None:
                body |= {"logprobs": True, "top_logprobs": options.logprobs}
        else:
            body["prompt"] = [p.text for p in prompts]
            if options.logprobs is not None:
                body["logprobs"] = options.logprobs
        path = "/chat/completions" if chat else "/completions"
        generation = UpstreamGeneration(self._session, self._base_url + path, body)
        generation.usage.prompt_tokens = sum(p.tokens for p in prompts)
        return generation


def _upstream_error(status: int, body: bytes) -> EngineError:
    """A client error upstream (bad parameters) stays 400; anything else is our 502."""
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:500].decode("utf-8", "replace")
    if status in (400, 404, 413, 422):
        return EngineError(f"the model server refused the request: {message}", 400)
    return EngineError(f"the upstream server answered {status}: {message}", 502)


def _logprobs(raw: dict[str, Any] | None) -> list[TokenLogprob]:
    """Chat (``content``) or legacy (parallel lists) logprobs of one chunk."""
    if not raw:
        return []
    if raw.get("content") is not None:
        return [
            TokenLogprob(
                e["token"],
                float(e["logprob"]),
                [(t["token"], float(t["logprob"])) for t in e.get("top_logprobs") or []],
            )
            for e in raw["content"]
        ]
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or [0.0] * len(tokens)
    tops = raw.get("top_logprobs") or [{}] * len(tokens)
    return [
        TokenLogprob(token, float(lp or 0.0), [(t, float(v)) for t, v in (top or {}).items()])
        for token, lp, top in zip(tokens, values, tops, strict=False)
    ]
