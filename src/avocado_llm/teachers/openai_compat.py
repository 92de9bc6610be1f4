"""A teacher behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, a
llama.cpp server, OpenAI itself).

A harvest runs for hours against endpoints that fail in ordinary ways — rate limits, restarts,
dropped connections — so transient failures are retried with capped exponential backoff and full
jitter (workers that failed together do not come back together), while failures a retry cannot
fix (a bad request, a wrong key, an unknown model) stop at once with the server's own message.
Endpoints give token strings, not ids, so logprobs carry ``token_id=None``.

An endpoint is not trusted. Each request has one deadline (``timeout_s``, the recipe's
``harvest.request_timeout_s``, for the whole request, not per read) and a byte cap on its body
(``max_response_bytes``, by default :func:`response_cap` of what was asked); an answer past
either is retried, then fails (:mod:`avocado_llm.teachers.bounded` reads the body). Every
answer is checked (:mod:`avocado_llm.teachers.answers`) before it becomes a :class:`Completion`:
types, Unicode (no lone surrogates), counts (``0 ≤ tokens < 2**31``; completion tokens, logprob
positions and text bounded by ``max_tokens``), and log-probabilities (finite and ≤ 0; a
positive value up to ``LOGPROB_ROUNDING`` is a server's rounding and is stored as 0). An answer
that fails a check fails alone (:class:`BadAnswer`): the batch's other answers are kept
(:class:`PartialAnswers`). The API key is stripped of surrounding whitespace and refused if it
holds control characters; it, and any credentials in ``base_url``, are masked in every message
(:mod:`avocado_llm.teachers.redact`), and provenance records the URL without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from avocado_llm.config.teacher_options import PromptTemplate
from avocado_llm.teachers.answers import Malformed, chat_shape, parse_completions
from avocado_llm.teachers.base import (
    BadAnswer,
    Completion,
    Messages,
    PartialAnswers,
    SamplingParams,
    TeacherError,
    TeacherInfo,
)
from avocado_llm.teachers.bounded import (
    ERROR_BODY_BYTES,
    TooBig,
    error_message,
    read_capped,
    retry_after,
)
from avocado_llm.teachers.redact import add_secret, protect_logger, public_url, redact, url_secrets

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ANSWER_STATUSES = frozenset({400, 413, 422})
"""Refusals of one request's content (a prompt too long, say): that answer fails, not the batch."""
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_TOP_LOGPROBS = 20  # OpenAI refuses more; vLLM's default --max-logprobs is 20 too


def response_cap(params: SamplingParams, n: int, top_logprobs: int) -> int:
    """The default byte cap of one answer's body: 1 MiB, plus 8 KiB of JSON for every token
    position of every choice and 1 KiB for each of its top-k alternatives (about 6 MiB for 512
    tokens with top-20): several times what a real server sends, far from a runaway body."""
    per_position = 8192 + 1024 * top_logprobs
    return (1 << 20) + n * (params.max_new_tokens + 1) * per_position


class _Transient(Exception):
    """One failed attempt that a retry may fix; ``wait_s`` is the server's Retry-After.
    ``answer_only``: the fault is this answer's (too big, too slow), not the endpoint's."""

    def __init__(self, cause: str, wait_s: float | None = None, answer_only: bool = False) -> None:
        super().__init__(cause)
        self.wait_s = wait_s
        self.answer_only = answer_only


def _read_key(teacher: str, env: str | None) -> str | None:
    """The API key in ``$env``: surrounding whitespace (a pasted ``\r\n``) stripped; refused,
    without being shown, if it holds control or non-ASCII characters (no HTTP header can)."""
    if not env:
        return None
    raw = os.environ.get(env)
    key = raw.strip() if raw is not None else ""
    if not key:
        blank = " (it is blank)" if raw else ""
        raise TeacherError(teacher, f"environment variable {env} (the API key) is not set{blank}")
    add_secret(key)
    bad = [i for i, c in enumerate(key) if not (c.isascii() and c.isprintable())]
    if bad:
        raise TeacherError(
            teacher,
            f"the API key in {env} holds {len(bad)} control or non-ASCII character(s) (the first "
            f"at position {bad[0]} of {len(key)}), which no HTTP header can carry; set {env} to "
            "the key alone",
        )
    return key


def _endpoint(base_url: str, path: str) -> str:
    """``base_url`` + ``/path``, its query (an Azure-style ``?api-version=``) kept after it."""
    parts = urlsplit(base_url)
    return urlunsplit(
        (parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{path}", parts.query, "")
    )


class OpenAICompatTeacher:
    """Asks an endpoint, one request per conversation (all ``n`` answers in it, or ``max_n``
    per request)."""

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
        max_response_bytes: int | None = None,
        prompt_template: PromptTemplate | None = None,
        max_n: int | None = None,
    ) -> None:
        # Read once, now: a harvest should fail before its first request, not mid-run.
        for secret in url_secrets(base_url):
            add_secret(secret)
        protect_logger("httpx")
        protect_logger("httpcore")
        self._api_key = _read_key(name, api_key_env)
        self.name, self.model = name, model
        self.base_url = base_url.rstrip("/")
        """As given, credentials included: used for requests only."""
        self.public_url = public_url(base_url).rstrip("/")
        """Without user, password or query: what provenance, reports and messages show."""
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.supports_logprobs, self.keep_reasoning = supports_logprobs, keep_reasoning
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.max_response_bytes = max_response_bytes
        self.max_n = max_n
        """Most answers per request (None: all of a prompt's in one)."""
        self.prompt_template = prompt_template
        """A base model's: the conversation goes to /completions as plain text, with stops."""
        self.path = "completions" if prompt_template is not None else "chat/completions"
        revision = f"{self.public_url}#{model}"
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
            # The per-read timeouts sit past the request's own deadline, which always ends first.
            timeout = httpx.Timeout(self.timeout_s + 1.0)
            self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)
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
        """``params.n`` answers per conversation. A conversation whose answer is bad fails alone:
        :class:`PartialAnswers` then carries the others; any other failure fails the batch."""
        client = self._bind()
        tasks = [asyncio.ensure_future(self._one(client, c, params)) for c in conversations]
        try:
            results = list(await asyncio.gather(*tasks))
        except BaseException:
            # One failure fails the batch: stop the others instead of leaving them to run on.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        errors = [f"{type(r).__name__}: {r}" if isinstance(r, BadAnswer) else None for r in results]
        answers = [None if isinstance(r, BadAnswer) else r for r in results]
        if any(e is not None for e in errors):
            raise PartialAnswers(self.name, answers, errors)
        return [a for a in answers if a is not None]

    async def _one(
        self, client: httpx.AsyncClient, messages: Messages, params: SamplingParams
    ) -> list[Completion] | BadAnswer:
        try:
            return await self._answer(client, messages, params)
        except BadAnswer as error:
            return error

    async def _answer(
        self, client: httpx.AsyncClient, messages: Messages, params: SamplingParams
    ) -> list[Completion]:
        completions: list[Completion] = []
        while len(completions) < params.n:
            # Some servers ignore ``n`` and answer once, some refuse more than ``max_n``: ask
            # again for the rest, with the seed moved on, or a seeded sampler would repeat the
            # answers it already gave.
            done = len(completions)
            ask = min(params.n - done, self.max_n or params.n)
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "n": ask,
                "seed": params.seed + done,
            }
            k = min(params.top_logprobs, MAX_TOP_LOGPROBS) if self.supports_logprobs else 0
            if k > 0:
                body.update(logprobs=True, top_logprobs=k)
            if self.prompt_template is not None:
                body = self._completions_body(body, messages, k)
            async with self._semaphore:  # held through backoff: a struggling server gets less
                got = await self._request(client, body, params)
            completions.extend(got)
        return completions[: params.n]

    def _completions_body(self, chat: dict[str, Any], messages: Messages, k: int) -> dict[str, Any]:
        """The chat request as a ``/completions`` one: the prompt template's text and stops;
        ``logprobs`` is the number of alternatives there."""
        template = self.prompt_template
        assert template is not None
        body = {key: v for key, v in chat.items() if key not in ("messages", "top_logprobs")}
        body.update(prompt=template.render(messages), stop=list(template.stop))
        body["logprobs"] = k if k > 0 else None
        if not template.add_bos:  # vLLM's own field; the default adds the tokenizer's BOS
            body["add_special_tokens"] = False
        return {key: v for key, v in body.items() if v is not None}

    async def _request(
        self, client: httpx.AsyncClient, body: dict[str, Any], params: SamplingParams
    ) -> list[Completion]:
        url = _endpoint(self.base_url, self.path)
        k = int(body.get("top_logprobs", 0) or body.get("logprobs") or 0)
        cap = self.max_response_bytes or response_cap(params, int(body["n"]), k)
        cause: _Transient | None = None
        for attempt in range(self.max_retries + 1):
            if cause is not None:
                await asyncio.sleep(self._delay(attempt - 1, cause.wait_s))
            t0 = time.perf_counter()
            try:
                data = await self._post(client, url, body, cap)
            except _Transient as exc:
                cause = exc
                continue
            try:
                latency = time.perf_counter() - t0
                if self.prompt_template is not None:
                    data = chat_shape(data)
                return parse_completions(data, latency, k, params, self.keep_reasoning)
            except Malformed as exc:
                raise BadAnswer(self.name, f"malformed answer: {exc}") from None
        error = BadAnswer if cause is not None and cause.answer_only else TeacherError
        tries = self.max_retries + 1
        raise error(self.name, f"gave up after {tries} attempts; last error: {cause}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter; a server's Retry-After is a floor (capped at ``backoff_max_s``, so that
        a confused server cannot stall a harvest), and the jitter still spreads the clients it
        told to come back at the same moment."""
        jitter = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
        if retry_after is None:
            return jitter
        return max(min(retry_after, self.backoff_max_s), jitter)

    async def _post(
        self, client: httpx.AsyncClient, url: str, body: dict[str, Any], cap: int
    ) -> Any:
        """The answer's JSON, its body streamed under the byte cap, the whole request under one
        deadline."""
        where = f"{self.public_url}/{self.path}"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.stream("POST", url, json=body) as response:
                    status = response.status_code
                    if status >= 400:
                        raw = await read_capped(response, ERROR_BODY_BYTES, truncate=True)
                    else:
                        raw = await read_capped(response, cap)
        except TimeoutError:
            cause = f"no whole answer within request_timeout_s ({self.timeout_s:g} s)"
            raise _Transient(cause, answer_only=True) from None
        except TooBig as exc:
            raise _Transient(str(exc), answer_only=True) from None
        except TRANSIENT_ERRORS as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:  # e.g. a header httpx refuses to send: no retry fixes it
            raise TeacherError(self.name, f"{type(exc).__name__}: {exc}") from exc
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {error_message(raw)}", retry_after(response))
        if status in ANSWER_STATUSES:
            raise BadAnswer(self.name, f"HTTP {status} from {where}: {error_message(raw)}")
        if status >= 400:
            raise TeacherError(self.name, f"HTTP {status} from {where}: {error_message(raw)}")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's stack
            kind = response.headers.get("content-type", "no content type")
            text = redact(raw.decode("utf-8", "replace"))[:200]
            raise BadAnswer(self.name, f"non-JSON answer ({kind}): {text!r}") from None
