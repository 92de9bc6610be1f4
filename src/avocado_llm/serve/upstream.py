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

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from avocado_watermark.xargs import to_xargs

from avocado_llm.serve.engine import (
    STRUCTURED_OUTPUTS,
    TOOLS,
    Delta,
    EngineError,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    Usage,
    longest_token,
)
from avocado_llm.serve.tools import CallChecker, compact
from avocado_llm.serve.upstream_probe import MISSING, PROBE_EVERY_S, Verdict, WatermarkGuard

log = logging.getLogger("avocado.serve.upstream")

# A conversation's template adds a few tokens per message around the text; bytes bound the
# text's tokens from above for byte-level tokenizers, which is all a hold needs.
_TEMPLATE_ALLOWANCE = 16
# The upstream's prompt count may exceed ours (a template's default system prompt, another
# tokenizer), but not by more than this: beyond it, its usage is not believed.
_PROMPT_SLACK = 1024
# A template writes tools' schemas as JSON, maybe indented (up to twice the compact bytes),
# after a preamble of its own that says how to call them.
_TOOLS_ALLOWANCE = 512


class UpstreamGeneration:
    """One forwarded request, read as the upstream streams it.

    Until the upstream's usage arrives, :attr:`usage` is the gateway's own count: the prompt
    tokens it counted (exact with a tokenizer, else an upper bound) and one token per chunk
    of text passed on. The upstream's usage replaces it only if it is believable: whole
    numbers, at least the text passed on, at most what was asked for (``max_tokens`` per
    choice) and a prompt count near the gateway's. Anything else — a usage missing, negative,
    zero for a whole answer, 10¹² — is the upstream's failure: a 502, with the gateway's own
    count kept as what the text already passed on is billed for (``EngineError.billable``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: dict[str, Any],
        prompts: Sequence[Prompt],
        choices: int,
        max_completion: int,
        guard: WatermarkGuard | None = None,
    ) -> None:
        self.usage = Usage(prompt_tokens=sum(p.tokens for p in prompts))
        self._guard = guard  # a watermarked request's: the processor must be there
        self._session = session
        self._url = url
        self._body = body
        self._choices = choices
        # echo: each choice's first chunk of text is its prompt (vLLM's: with the first token),
        # which the upstream did not generate. It is a chunk more than max_tokens allows, and
        # the usage's completion tokens may be one fewer than the chunks counted.
        self._echoes = choices if body.get("echo") else 0
        self._max_completion = max_completion + self._echoes
        self._prompt_bound = sum(2 * max(p.tokens, _byte_bound(p)) for p in prompts)
        self._prompt_bound += _PROMPT_SLACK
        self._counted = 0  # chunks with text (or a function call's piece) passed on
        self._reported = False  # the upstream's usage arrived
        self._calls = CallChecker.of(prompts[0].tools if prompts else None,
                                     body.get("tool_choice"),
                                     body.get("parallel_tool_calls"))  # fmt: skip

    async def __aiter__(self) -> AsyncIterator[Delta]:
        try:
            if self._guard is not None:
                await self._guard.require()  # never forwarded to be served unmarked
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
            if not self._reported:
                raise self._failed("its answer ended without a usage", None)
        except EngineError as e:
            e.billable = self._counted > 0
            raise
        except TimeoutError as e:
            raise self._failed("timeout", e, "The model server did not answer in time.") from e
        except aiohttp.ClientError as e:
            if self._guard is not None and isinstance(e, aiohttp.ClientConnectionError):
                self._guard.forget()  # maybe restarted: ask again before the next
            raise self._failed(type(e).__name__, e, "The model server could not be reached or "
                               "broke off its answer.") from e  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise self._failed(f"an unreadable answer: {type(e).__name__}", e) from e

    def _read(self, chunk: Any) -> list[Delta]:
        if not isinstance(chunk, dict):
            raise TypeError(f"a chunk that is not an object: {chunk!r:.200}")
        if "error" in chunk:
            raise self._failed("an error in its stream", chunk["error"])
        deltas = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or choice.get("text") or ""
            finish = choice.get("finish_reason")
            index = choice.get("index", 0)
            if not isinstance(text, str) or not isinstance(finish, str | None):
                raise TypeError(f"a choice of the wrong shape: {choice!r:.200}")
            if type(index) is not int or not 0 <= index < self._choices:
                raise ValueError(f"a choice index out of range: {index!r:.50}")
            calls = self._calls.take(index, delta.get("tool_calls"))
            if finish == "tool_calls" and not self._calls.calls(index):
                raise ValueError("a finish_reason tool_calls without a tool call")
            if text or finish or calls:
                if text or calls:  # a function call's tokens are output tokens too
                    self._counted += 1
                    if self._counted > self._max_completion:
                        raise self._failed("more text than max_tokens allows", None)
                self.usage.completion_tokens = max(self.usage.completion_tokens, self._counted)
                logprobs = _logprobs(choice.get("logprobs"))
                deltas.append(Delta(index, text, finish, logprobs, calls))
        if (usage := chunk.get("usage")) is not None:
            self._take_usage(usage)
        return deltas

    def _take_usage(self, usage: Any) -> None:
        """The upstream's usage, if believable (see the class); else a 502."""
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if type(prompt) is not int or type(completion) is not int:
            raise self._failed("a usage without whole token counts", usage)
        if not 1 <= prompt <= self._prompt_bound:
            raise self._failed(f"a usage of {prompt} prompt tokens", usage)
        if not self._counted - self._echoes <= completion <= self._max_completion:
            raise self._failed(
                f"a usage of {completion} completion tokens for {self._counted} chunks of text "
                f"(max {self._max_completion})",
                usage,
            )
        self.usage = Usage(prompt, completion)
        self._reported = True

    def _failed(self, what: str, detail: object, message: str | None = None) -> EngineError:
        """A 502 whose message says nothing of the upstream (its text can name internal
        hosts and models); the upstream's own words go to the log under a reference."""
        ref = uuid.uuid4().hex[:12]
        log.warning("upstream failure %s at %s: %s: %.2000r", ref, self._url, what, detail)
        message = message or "The model server sent an answer this server cannot use."
        return EngineError(f"{message} Retry later (reference {ref}).", 502, "upstream_error",
                           billable=self._counted > 0)  # fmt: skip

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


_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too long")


def _upstream_error(status: int, body: bytes) -> EngineError:
    """A client error upstream (bad parameters) stays 400; anything else is our 502. The
    client never sees the upstream's text (it can name internal models and hosts): it is
    logged under a reference that the client's message gives."""
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:2000].decode("utf-8", "replace")
    ref = uuid.uuid4().hex[:12]
    log.warning("upstream answered %d, reference %s: %.2000r", status, ref, message)
    if status in (400, 404, 413, 422):
        if any(word in message.lower() for word in _CONTEXT_WORDS):
            return EngineError(
                "The prompt and max_tokens do not fit the model's context length; shorten the "
                f"prompt or lower max_tokens (reference {ref}).",
                400,
                "context_length_exceeded",
            )
        return EngineError(
            f"The model server refused the request's parameters (reference {ref}).", 400
        )
    return EngineError(
        f"The model server failed to answer (reference {ref}); retry later.", 502,
        "upstream_error",
    )  # fmt: skip


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
        TokenLogprob(token, _float(lp), [(t, float(v)) for t, v in (top or {}).items()])
        for token, lp, top in zip(tokens, values, tops, strict=False)
    ]


def _float(value: Any) -> float | None:
    """A log-probability; None stays None (an echoed prompt's first token has none)."""
    return None if value is None else float(value)
