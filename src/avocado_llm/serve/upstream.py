"""Upstream mode: the same keys, limits and metering in front of any OpenAI-compatible server.

Every request is forwarded as a *stream* with ``stream_options.include_usage``, whatever the
client asked, so that the upstream's own ``usage`` (its tokenizer's count) is what we bill,
and so that a client who hangs up closes the upstream connection too (vLLM then aborts the
request). Until the upstream's final usage arrives, each chunk that carries text counts as one
produced token: that is what a client pays for when it leaves mid-stream.

The client is aiohttp's (its HTTP parser is compiled; its pool hands out the most recently
used idle connection): per forwarded request it costs a fraction of httpx's CPU, and the
upstream hop is most of the gateway's own work (``bench/gateway_overhead.py``).

Here: what is forwarded (the request's body, the prompt's count); reading the answer and
believing its usage: :mod:`~avocado_llm.serve.upstream_answer`; whether the upstream runs the
watermark processor: :mod:`~avocado_llm.serve.upstream_probe`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from avocado_watermark.xargs import to_xargs

from avocado_llm.serve.engine import (
    STRUCTURED_OUTPUTS,
    TOOLS,
    EngineError,
    Prompt,
    SamplingOptions,
    longest_token,
)
from avocado_llm.serve.tools import compact
from avocado_llm.serve.upstream_answer import UpstreamGeneration
from avocado_llm.serve.upstream_probe import MISSING, PROBE_EVERY_S, Verdict, WatermarkGuard

# A conversation's template adds a few tokens per message around the text; bytes bound the
# text's tokens from above for byte-level tokenizers, which is all a hold needs.
_TEMPLATE_ALLOWANCE = 16
# A template writes tools' schemas as JSON, maybe indented (up to twice the compact bytes),
# after a preamble of its own that says how to call them.
_TOOLS_ALLOWANCE = 512


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
        watermark: bool = True,
        probe_every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.model = model_name
        self.watermark = watermark
        """Whether a request's watermark goes upstream (``vllm_xargs``, for vLLM's processor)."""
        self.upstream_model = upstream_model or model_name
        self.context_length: int | None = None
        self.max_token_chars: int | None = 1  # without a tokenizer, a token is a byte (or more)
        self.features = frozenset({TOOLS, STRUCTURED_OUTPUTS})  # forwarded (vLLM has both)
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=10.0)
        self._tokenizer_dir = tokenizer_dir
        self._tokenizer: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._probe_every_s = probe_every_s
        self.guard: WatermarkGuard | None = None
        """With ``watermark``: whether the upstream runs the processor (``upstream_probe``)."""
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        if self._tokenizer_dir is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self._tokenizer_dir, trust_remote_code=False
            )
            self.max_token_chars = longest_token(self._tokenizer)
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            # no cap on connections (the limits are ours, per key), keep idle ones 60 s
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False,
            trust_env=False,
        )
        if self.watermark:
            await self._start_guard(self._session)

    async def _start_guard(self, session: aiohttp.ClientSession) -> None:
        """Probe the upstream: refuse to start in front of one without the processor; one
        that does not answer yet is asked again by the first watermarked request."""
        guard = WatermarkGuard(session, self._base_url, self.upstream_model)
        if await guard.check() is Verdict.MISSING:
            await session.close()
            self._session = None
            raise RuntimeError(MISSING)
        self.guard = guard
        self._watch = asyncio.create_task(guard.watch(self._probe_every_s))

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Prompt:
        if self._tokenizer is not None and self._tokenizer.chat_template:
            # an earlier call's null content counts as empty (a template without tools adds
            # it to a string); the messages forwarded keep it null
            counted = [m if m.get("content") is not None else {**m, "content": ""}
                       for m in messages]  # fmt: skip
            try:
                text = self._tokenizer.apply_chat_template(
                    counted, tools=tools, tokenize=False, add_generation_prompt=True
                )
            except Exception as e:  # jinja raises its own errors for conversations it refuses
                raise ValueError(f"the model's chat template refused the messages: {e}") from e
            tokens = len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
            if tools and not all(t["function"]["name"] in text for t in tools):
                # a template that leaves tools out: the upstream's own may not (the hold
                # covers them as the byte bound does; its charge can never exceed the hold)
                schemas = self._tokenizer(compact(tools), add_special_tokens=False)["input_ids"]
                tokens += 2 * len(schemas) + _TOOLS_ALLOWANCE
        else:
            tokens = _byte_bound(Prompt(tokens=0, messages=messages, tools=tools))
        return Prompt(tokens=tokens, messages=messages, tools=tools)

    def text_prompt(self, text: str) -> Prompt:
        if self._tokenizer is not None:
            tokens = len(self._tokenizer(text)["input_ids"])
        else:
            tokens = _byte_bound(Prompt(tokens=0, text=text))
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
        if self.watermark and options.watermark is not None:
            # the account's key and the plan's strength (never the secret); clients cannot
            # send vllm_xargs themselves (an unknown argument: 400)
            body["vllm_xargs"] = to_xargs(options.watermark)
        chat = prompts[0].messages is not None
        if chat:
            body["messages"] = prompts[0].messages
            if options.logprobs is not None:
                body |= {"logprobs": True, "top_logprobs": options.logprobs}
            if prompts[0].tools:
                body["tools"] = prompts[0].tools
                if options.tool_choice is not None:
                    body["tool_choice"] = options.tool_choice
                if options.parallel_tool_calls is not None:
                    body["parallel_tool_calls"] = options.parallel_tool_calls
            if options.response_format is not None:
                body["response_format"] = options.response_format
        else:
            body["prompt"] = [p.text if p.text is not None else list(p.token_ids or ())
                              for p in prompts]  # fmt: skip
            if options.echo:
                body["echo"] = True
            if options.logprobs is not None:
                body["logprobs"] = options.logprobs
        guard = self.guard if "vllm_xargs" in body else None
        if guard is not None:
            guard.refuse_if_missing()  # a 503 before anything is forwarded or streamed
        path = "/chat/completions" if chat else "/completions"
        choices = len(prompts) * options.n
        return UpstreamGeneration(
            self._session, self._base_url + path, body, prompts, choices,
            max_completion=choices * options.max_tokens,
            prompt_bound=sum(2 * max(p.tokens, _byte_bound(p)) for p in prompts),
            guard=guard,
        )  # fmt: skip


def _byte_bound(prompt: Prompt) -> int:
    """The prompt's tokens bounded from above by its bytes (byte-level tokenizers), plus the
    template's allowance per message: what the gateway counts when it has no tokenizer."""
    if prompt.messages is not None:
        size = sum(_message_bytes(m) for m in prompt.messages)
        if prompt.tools:
            size += 2 * len(compact(prompt.tools).encode()) + _TOOLS_ALLOWANCE
        return size + _TEMPLATE_ALLOWANCE * (len(prompt.messages) + 1)
    return len((prompt.text or "").encode()) + _TEMPLATE_ALLOWANCE


def _message_bytes(message: dict[str, Any]) -> int:
    """Bytes of a message's text, its earlier function calls and the call it answers."""
    size = len(str(message.get("content") or "").encode())
    if message.get("tool_calls"):
        size += len(compact(message["tool_calls"]).encode())
    return size + len(str(message.get("tool_call_id") or "").encode())
