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
either is retried, then fails. Every answer is checked before it becomes a :class:`Completion`:
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
import math
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from avocado_llm.teachers.base import (
    BadAnswer,
    Completion,
    Messages,
    PartialAnswers,
    SamplingParams,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
)
from avocado_llm.teachers.redact import add_secret, protect_logger, public_url, redact, url_secrets

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ANSWER_STATUSES = frozenset({400, 413, 422})
"""Refusals of one request's content (a prompt too long, say): that answer fails, not the batch."""
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_TOP_LOGPROBS = 20  # OpenAI refuses more; vLLM's default --max-logprobs is 20 too
# Only running out of tokens is "length"; tool calls, content filters and the like end an
# answer on the model's (or the server's) own terms: "stop".
LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})
LOGPROB_ROUNDING = 1e-4
"""A positive log-probability up to this is a server's float rounding (a log-softmax of a
near-certain token), stored as 0; above it the answer is refused."""
MAX_COUNT = 2**31 - 1
"""Token counts are int32 in the harvest's Parquet schema."""
MAX_TOKEN_BYTES = 256
"""More bytes than any token of the usual vocabularies spells: ``max_tokens`` tokens of text are
at most ``max_tokens × MAX_TOKEN_BYTES`` bytes (+ ``TEXT_SLACK_BYTES``)."""
TEXT_SLACK_BYTES = 1024
ERROR_BODY_BYTES = 64 << 10
"""An error answer is read up to this much (the rest is dropped)."""


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


class _Malformed(ValueError):
    """The answer breaks the protocol or a bound; the message says where."""


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
        max_response_bytes: int | None = None,
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
                got = await self._request(client, body, params)
            completions.extend(got)
        return completions[: params.n]

    async def _request(
        self, client: httpx.AsyncClient, body: dict[str, Any], params: SamplingParams
    ) -> list[Completion]:
        url = _endpoint(self.base_url, "chat/completions")
        k = int(body.get("top_logprobs", 0))
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
                return self._parse(data, time.perf_counter() - t0, k, params)
            except _Malformed as exc:
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
        where = f"{self.public_url}/chat/completions"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.stream("POST", url, json=body) as response:
                    status = response.status_code
                    if status >= 400:
                        raw = await _read(response, ERROR_BODY_BYTES, truncate=True)
                    else:
                        raw = await _read(response, cap)
        except TimeoutError:
            cause = f"no whole answer within request_timeout_s ({self.timeout_s:g} s)"
            raise _Transient(cause, answer_only=True) from None
        except _TooBig as exc:
            raise _Transient(str(exc), answer_only=True) from None
        except TRANSIENT_ERRORS as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:  # e.g. a header httpx refuses to send: no retry fixes it
            raise TeacherError(self.name, f"{type(exc).__name__}: {exc}") from exc
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {_error(raw)}", _retry_after(response))
        if status in ANSWER_STATUSES:
            raise BadAnswer(self.name, f"HTTP {status} from {where}: {_error(raw)}")
        if status >= 400:
            raise TeacherError(self.name, f"HTTP {status} from {where}: {_error(raw)}")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's stack
            kind = response.headers.get("content-type", "no content type")
            text = redact(raw.decode("utf-8", "replace"))[:200]
            raise BadAnswer(self.name, f"non-JSON answer ({kind}): {text!r}") from None

    def _parse(
        self, data: Any, latency: float, top_k: int, params: SamplingParams
    ) -> list[Completion]:
        """Completions from a checked answer (see the module's docstring); a _Malformed says
        which field broke which rule."""
        if not isinstance(data, dict):
            raise _Malformed(f"the answer is a JSON {type(data).__name__}, not an object")
        usage = _object(data.get("usage"), "usage")
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not raw_choices:
            raise _Malformed("no choices")
        indexed = []
        for i, choice in enumerate(raw_choices):
            choice = _object(choice, f"choices[{i}]")
            index = choice.get("index", i)
            indexed.append((_count(index, f"choices[{i}].index"), i, choice))
        choices = [c for _, _, c in sorted(indexed, key=lambda t: t[:2])]
        limit = params.max_new_tokens + 1  # one token of slack: an end-of-turn some count
        logprobs = [_logprobs(c, top_k, limit) if top_k else None for c in choices]
        prompt_tokens = _count(usage.get("prompt_tokens") or 0, "usage.prompt_tokens")
        total = _count(usage.get("completion_tokens") or 0, "usage.completion_tokens")
        if total > len(choices) * limit:
            raise _Malformed(
                f"usage.completion_tokens is {total} for {len(choices)} choice(s) of at most "
                f"max_tokens={params.max_new_tokens}"
            )
        counts = _share(total, [len(lp or []) for lp in logprobs])
        max_bytes = params.max_new_tokens * MAX_TOKEN_BYTES + TEXT_SLACK_BYTES
        completions = []
        for i, (choice, lps, count) in enumerate(zip(choices, logprobs, counts, strict=True)):
            message = _object(choice.get("message"), f"choices[{i}].message")
            text = _text(message.get("content"), f"choices[{i}].message.content")
            reasoning = None
            if self.keep_reasoning:
                field = "reasoning_content" if "reasoning_content" in message else "reasoning"
                reasoning = _text(message.get(field), f"choices[{i}].message.{field}") or None
            size = len(text.encode()) + len((reasoning or "").encode())
            if size > max_bytes:
                raise _Malformed(
                    f"choices[{i}] has {size} bytes of text, more than max_tokens="
                    f"{params.max_new_tokens} tokens can spell ({max_bytes})"
                )
            finish = choice.get("finish_reason")
            if finish is not None and not isinstance(finish, str):
                raise _Malformed(f"choices[{i}].finish_reason is a {type(finish).__name__}")
            completions.append(
                Completion(
                    text=text,
                    finish_reason="length" if finish in LENGTH_REASONS else "stop",
                    logprobs=lps,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=count,
                    reasoning=reasoning,
                    latency_s=latency,
                )
            )
        return completions


class _TooBig(Exception):
    pass


async def _read(response: httpx.Response, cap: int, truncate: bool = False) -> bytes:
    """The body, at most ``cap`` bytes (decoded): past it, a _TooBig, or (``truncate``) the first
    ``cap`` bytes. A Content-Length over the cap is refused before any byte is read."""
    length = response.headers.get("content-length", "")
    if not truncate and length.isdigit() and int(length) > cap:
        raise _TooBig(f"the answer is {int(length)} bytes long, over the cap of {cap}")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if truncate:
                break
            raise _TooBig(f"the answer went past the cap of {cap} bytes")
    return b"".join(chunks)[:cap]


def _error(raw: bytes) -> str:
    """The server's own words: OpenAI's envelope, FastAPI's ``detail``, or the raw text.
    Some servers echo the key they refused, or the request's headers: it is redacted."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    message: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("detail") or data.get("message")
    text = str(message) if message else text
    return redact(text)[:500]


def _object(value: Any, where: str) -> dict[str, Any]:
    """A JSON object, ``None`` read as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is a {type(value).__name__}, not an object")
    return value


def _count(value: Any, where: str) -> int:
    """A whole number in ``[0, 2**31)`` (a float that is one, like 12.0, is accepted)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{where} is {_show(value)}, not a whole number")
    if not 0 <= value <= MAX_COUNT:
        raise _Malformed(f"{where} is {value}, outside [0, {MAX_COUNT}]")
    return value


def _text(value: Any, where: str) -> str:
    """A string (``None`` read as empty) that is valid Unicode: no lone surrogates."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"{where} is a {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _Malformed(f"{where} holds a lone surrogate at {error.start}") from None
    return value


def _logprob(value: Any, where: str) -> float:
    """A log-probability: finite and ≤ 0 (up to ``LOGPROB_ROUNDING``, then clamped to 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{where} is {_show(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number) or number > LOGPROB_ROUNDING:
        raise _Malformed(f"{where} is {number}, not a log-probability (finite and at most 0)")
    return min(number, 0.0)


def _logprobs(choice: dict[str, Any], top_k: int, limit: int) -> list[TokenLogprobs] | None:
    where = f"choices[{choice.get('index')}].logprobs"
    block = _object(choice.get("logprobs"), where)
    content = block.get("content")
    if content is None:
        return None
    if not isinstance(content, list):
        raise _Malformed(f"{where}.content is a {type(content).__name__}, not a list")
    if len(content) > limit:
        raise _Malformed(f"{where} has {len(content)} positions for max_tokens={limit - 1}")
    positions = []
    for p, entry in enumerate(content):
        here = f"{where}.content[{p}]"
        entry = _object(entry, here)
        tops = entry.get("top_logprobs") or []
        if not isinstance(tops, list) or len(tops) > top_k + 1:
            raise _Malformed(f"{here}.top_logprobs is not a list of at most {top_k + 1}")
        tops = [_object(t, f"{here}.top_logprobs[{j}]") for j, t in enumerate(tops)]
        positions.append(
            TokenLogprobs(
                token_id=None,
                token=_token(entry.get("token"), f"{here}.token"),
                logprob=_logprob(entry.get("logprob"), f"{here}.logprob"),
                top_ids=[None] * len(tops),
                top_tokens=[
                    _token(t.get("token"), f"{here}.top_logprobs[{j}].token")
                    for j, t in enumerate(tops)
                ],
                top_logprobs=[
                    _logprob(t.get("logprob"), f"{here}.top_logprobs[{j}].logprob")
                    for j, t in enumerate(tops)
                ],
            )
        )
    return positions


def _token(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{where} is {_show(value)}, not a string")
    if len(value) > 4 * MAX_TOKEN_BYTES:
        raise _Malformed(f"{where} is {len(value)} characters long, not one token")
    return _text(value, where)


def _show(value: Any) -> str:
    """A short description of a JSON value for a message."""
    shown = repr(value) if isinstance(value, int | float | bool) or value is None else ""
    return f"{type(value).__name__} {shown[:40]}".strip()


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
