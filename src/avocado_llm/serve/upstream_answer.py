"""Reading an upstream's streamed answer (:class:`UpstreamGeneration`): its chunks become the
engine's deltas, and its usage is what is billed only if it is believable. An upstream that
refuses, breaks off, or sends an answer of the wrong shape is a 502 (a 400 for the client's own
parameters) whose message never repeats the upstream's text. What is forwarded and why is the
module docstring of :mod:`~avocado_llm.serve.upstream`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from avocado_llm.serve.engine import Delta, EngineError, Prompt, TokenLogprob, Usage
from avocado_llm.serve.tools import CallChecker
from avocado_llm.serve.upstream_probe import WatermarkGuard

log = logging.getLogger("avocado.serve.upstream")

# The upstream's prompt count may exceed ours (a template's default system prompt, another
# tokenizer), but not by more than this: beyond it, its usage is not believed.
_PROMPT_SLACK = 1024


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
        prompt_bound: int,
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
        self._prompt_bound = prompt_bound + _PROMPT_SLACK
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
                    raise upstream_error(response.status, await response.read())
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


_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too long")


def upstream_error(status: int, body: bytes) -> EngineError:
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
