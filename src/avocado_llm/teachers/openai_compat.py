"""A teacher behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, a
llama.cpp server, OpenAI itself).

A harvest runs for hours against endpoints that fail in ordinary ways — rate limits, restarts,
dropped connections — so transient failures are retried with capped exponential backoff and full
jitter (workers that failed together do not come back together), while failures a retry cannot
fix (a bad request, a wrong key, an unknown model) stop at once with the server's own message.
Endpoints give token strings, not ids, so logprobs carry ``token_id=None``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx

from avocado_llm.teachers.base import (
    Completion,
    Messages,
    SamplingParams,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_TOP_LOGPROBS = 20  # OpenAI refuses more; vLLM's default --max-logprobs is 20 too
# Only running out of tokens is "length"; tool calls, content filters and the like end an
# answer on the model's (or the server's) own terms: "stop".
LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})


class _Transient(Exception):
    """One failed attempt that a retry may fix; ``wait_s`` is the server's Retry-After."""

    def __init__(self, cause: str, wait_s: float | None = None) -> None:
        super().__init__(cause)
        self.wait_s = wait_s


class OpenAICompatTeacher:
    """Asks an endpoint, one request per conversation (all ``n`` answers in it)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        licence: str = "unknown",
        max_concurrency: int = 8,
        supports_logprobs: bool = True,
        keep_reasoning: bool = False,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
    ) -> None:
        # Read once, now: a harvest should fail before its first request, not mid-run.
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            raise TeacherError(name, f"environment variable {api_key_env} (the API key) is not set")
        self.name, self.base_url, self.model = name, base_url.rstrip("/"), model
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.supports_logprobs, self.keep_reasoning = supports_logprobs, keep_reasoning
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        revision = f"{self.base_url}#{model}"
        self.info = TeacherInfo(name, model, revision, licence, tokenizer="remote")
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> httpx.AsyncClient:
        """The client (and semaphore) of the running loop: both belong to the loop that made
        them, and a caller may ``asyncio.run`` once per batch, so a new loop gets new ones (the
        old connections go to the garbage collector: ``aclose`` in each loop avoids that)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency)
            self._client = httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        client = self._bind()
        tasks = [asyncio.ensure_future(self._answer(client, c, params)) for c in conversations]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One failure fails the batch: stop the others instead of leaving them to run on.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _answer(
        self, client: httpx.AsyncClient, messages: Messages, params: SamplingParams
    ) -> list[Completion]:
        completions: list[Completion] = []
        while len(completions) < params.n:
            # Some servers ignore ``n`` and answer once: ask again for the rest, with the seed
            # moved on, or a seeded sampler would repeat the answers it already gave.
            done = len(completions)
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "n": params.n - done,
                "seed": params.seed + done,
            }
            k = min(params.top_logprobs, MAX_TOP_LOGPROBS) if self.supports_logprobs else 0
            if k > 0:
                body.update(logprobs=True, top_logprobs=k)
            async with self._semaphore:  # held through backoff: a struggling server gets less
                got = await self._request(client, body)
            if not got:
                raise TeacherError(self.name, "the endpoint answered with no choices")
            completions.extend(got)
        return completions[: params.n]

    async def _request(self, client: httpx.AsyncClient, body: dict[str, Any]) -> list[Completion]:
        url = f"{self.base_url}/chat/completions"
        cause: _Transient | None = None
        for attempt in range(self.max_retries + 1):
            if cause is not None:
                await asyncio.sleep(self._delay(attempt - 1, cause.wait_s))
            t0 = time.perf_counter()
            try:
                data = await self._post(client, url, body)
            except _Transient as exc:
                cause = exc
                continue
            return self._parse(data, time.perf_counter() - t0, "logprobs" in body)
        raise TeacherError(
            self.name, f"gave up after {self.max_retries + 1} attempts; last error: {cause}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter; a server's Retry-After is a floor (capped at ``backoff_max_s``, so that
        a confused server cannot stall a harvest), and the jitter still spreads the clients it
        told to come back at the same moment."""
        jitter = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
        if retry_after is None:
            return jitter
        return max(min(retry_after, self.backoff_max_s), jitter)

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
        try:
            response = await client.post(url, json=body)
        except TRANSIENT_ERRORS as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {self._error(response)}", _retry_after(response))
        if status >= 400:
            raise TeacherError(self.name, f"HTTP {status} from {url}: {self._error(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise TeacherError(self.name, f"non-JSON answer: {response.text[:200]!r}") from exc

    def _error(self, response: httpx.Response) -> str:
        """The server's own words: OpenAI's envelope, FastAPI's ``detail``, or the raw text.
        Some servers echo the key they refused; it never reaches an exception."""
        try:
            data = response.json()
        except ValueError:
            data = None
        message: Any = None
        if isinstance(data, dict):
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            message = message or data.get("detail") or data.get("message")
        text = str(message) if message else response.text[:500]
        return text.replace(self._api_key, "***") if self._api_key else text

    def _parse(self, data: Any, latency: float, want_logprobs: bool) -> list[Completion]:
        usage = data.get("usage") or {}
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        logprobs = [_logprobs(c) if want_logprobs else None for c in choices]
        sizes = [len(lp or []) for lp in logprobs]
        counts = _share(int(usage.get("completion_tokens") or 0), sizes)
        completions = []
        for choice, lps, count in zip(choices, logprobs, counts, strict=True):
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            finish = choice.get("finish_reason")
            completions.append(
                Completion(
                    text=message.get("content") or "",
                    finish_reason="length" if finish in LENGTH_REASONS else "stop",
                    logprobs=lps,
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=count,
                    reasoning=reasoning if self.keep_reasoning else None,
                    latency_s=latency,
                )
            )
        return completions


def _logprobs(choice: dict[str, Any]) -> list[TokenLogprobs] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return [
        TokenLogprobs(
            token_id=None,
            token=entry["token"],
            logprob=float(entry["logprob"]),
            top_ids=[None] * len(entry.get("top_logprobs") or []),
            top_tokens=[t["token"] for t in entry.get("top_logprobs") or []],
            top_logprobs=[float(t["logprob"]) for t in entry.get("top_logprobs") or []],
        )
        for entry in content
    ]


def _share(total: int, sizes: list[int]) -> list[int]:
    """Split a request's completion tokens (the API reports one sum) among its choices: each
    gets its logprob count, and the rest (end-of-turn tokens; all without logprobs) evenly."""
    base, rest = divmod(max(total - sum(sizes), 0), len(sizes) or 1)
    return [size + base + (i < rest) for i, size in enumerate(sizes)]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: the backoff alone decides
        return None
