"""What a request may ask, decided before anything runs: the model, the plan's caps, the
context, and the resolved sampling options. Shared by the chat and completions endpoints."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from avocado_llm.billing import Billing, KeyInfo, Plan
from avocado_llm.billing.leases import ServerLease
from avocado_llm.serve import protocol
from avocado_llm.serve.engine import (
    Delta,
    Engine,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from avocado_llm.serve.errors import bad_request, model_not_found
from avocado_llm.serve.ratelimit import Limiter
from avocado_llm.serve.settings import ServeSettings
from avocado_llm.telemetry.metrics import Metrics

T = TypeVar("T")


class KeyCache:
    """Keys looked up recently, by their HMAC (never the key itself), each for ``ttl_s``
    seconds: a paid request with a known key needs no ledger read of its own before its hold
    (which checks the key's revocation and expiry again, in the same statement)."""

    def __init__(self, ttl_s: float, max_keys: int = 10_000) -> None:
        self.ttl_s, self.max_keys = ttl_s, max_keys
        self._entries: dict[str, tuple[float, KeyInfo]] = {}

    def get(self, digest: str) -> KeyInfo | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, info: KeyInfo) -> None:
        if self.ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= self.max_keys:  # drop the stale, else start afresh
            self._entries = {d: e for d, e in self._entries.items() if e[0] >= now}
            if len(self._entries) >= self.max_keys:
                self._entries.clear()
        self._entries[digest] = (now + self.ttl_s, info)


@dataclass
class Services:
    """Everything requests share, built once by the app factory (``app.state.services``)."""

    settings: ServeSettings
    engine: Engine
    billing: Billing
    limiter: Limiter
    metrics: Metrics
    started_at: int = field(default_factory=lambda: int(time.time()))
    """Unix time the app was built (the ``created`` of its model)."""
    keys: KeyCache = field(default_factory=lambda: KeyCache(0.0))
    """Keys of paid requests looked up recently (``settings.key_cache_s``)."""
    ledger_limiter: anyio.CapacityLimiter | None = None
    """How many ledger calls run at a time in worker threads: one where the database takes one
    writer at a time (SQLite; dozens of threads queueing on its lock cost ~16% more CPU per
    request, ``bench/gateway_overhead.py``), else the thread pool's limit."""
    lease: ServerLease | None = None
    """This process's lease on the holds it places (started with the app); None: holds are
    placed without a server, as a crash's (tests that build services by hand)."""

    async def ledger(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, a blocking ledger call, in a worker thread (see ``ledger_limiter``)."""
        return await anyio.to_thread.run_sync(
            functools.partial(call, *args), limiter=self.ledger_limiter
        )


@dataclass(frozen=True)
class Call:
    """One validated request: what to generate, for whom, and how to answer."""

    endpoint: str
    """``chat`` or ``completions`` (metrics, request ids)."""
    key: KeyInfo
    prompts: list[Prompt]
    options: SamplingOptions
    stream: bool
    include_usage: bool
    body_hash: str
    """SHA-256 of the endpoint and the parsed body, for ``Idempotency-Key``."""

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.prompts)

    @property
    def max_completion_tokens(self) -> int:
        """The worst case: every choice of every prompt runs to ``max_tokens``."""
        return len(self.prompts) * self.options.n * self.options.max_tokens


@dataclass
class ChoiceResult:
    """One choice of a finished (non-streamed) answer."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    """The pieces of its function calls, in order (see :func:`serve.tools.merge_calls`)."""


class Formatter(Protocol):
    """The endpoint's response shapes (chat or legacy completions)."""

    def answer(
        self, rid: str, created: int, choices: list[ChoiceResult], usage: Usage
    ) -> BaseModel:
        """The whole answer of a non-streamed request."""
        ...

    def opening(self, rid: str, created: int, n_choices: int) -> Sequence[BaseModel]:
        """Chunks sent before any text (chat: the assistant role)."""
        ...

    def chunk(self, rid: str, created: int, delta: Delta) -> BaseModel | None:
        """The event of one delta; None: nothing to send (a delta without text, where the
        format has no event for a bare finish reason)."""
        ...

    def usage_chunk(self, rid: str, created: int, usage: Usage) -> BaseModel: ...


def check_model(engine: Engine, key: KeyInfo, model: str) -> None:
    """404 unless the engine serves ``model`` and the key may call it (one message for both)."""
    if model != engine.model or (key.models is not None and model not in key.models):
        raise model_not_found(model)


def check_plan(plan: Plan, *, max_tokens: int | None, n: int, top_logprobs: int | None) -> None:
    """The key's plan caps ``max_tokens``, ``n`` and logprobs (anti-extraction)."""
    if max_tokens is not None and max_tokens > plan.max_tokens:
        raise bad_request(
            f"max_tokens is {max_tokens}, but your plan ({plan.name!r}) allows at most "
            f"{plan.max_tokens}; lower it",
            param="max_tokens",
        )
    if n > plan.max_n:
        raise bad_request(
            f"n is {n}, but your plan ({plan.name!r}) allows at most {plan.max_n} choice(s) "
            "per request",
            param="n",
        )
    if top_logprobs is not None and not plan.logprobs:
        raise bad_request(
            f"logprobs are not available on your plan ({plan.name!r}); remove 'logprobs'",
            param="logprobs",
        )
    if top_logprobs is not None and top_logprobs > plan.max_top_logprobs:
        raise bad_request(
            f"top_logprobs is {top_logprobs}, but your plan ({plan.name!r}) allows at most "
            f"{plan.max_top_logprobs}",
            param="top_logprobs",
        )


def resolve_max_tokens(
    services: Services, plan: Plan, prompts: Sequence[Prompt], requested: int | None, default: int
) -> int:
    """``max_tokens`` to run with: the request's, else ``default``, within the plan and the
    context; 400 when a prompt (or prompt + requested max_tokens) does not fit."""
    context = services.engine.context_length
    limit = services.settings.max_prompt_tokens or context
    longest = max(p.tokens for p in prompts)
    if limit is not None and longest >= limit:
        known = (
            "The"
            if context is None
            else (f"This model's maximum context length is {context} tokens, and the")
        )
        raise bad_request(
            f"{known} prompt has {longest} tokens (the server takes prompts of at most "
            f"{limit - 1}); shorten it.",
            param="messages",
            code="context_length_exceeded",
        )
    room = context - longest if context is not None else plan.max_tokens
    if requested is None:
        return max(1, min(default, plan.max_tokens, room))
    if requested > room:
        raise bad_request(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{longest + requested} tokens ({longest} in the prompt, {requested} for the "
            "completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def body_hash(endpoint: str, body: BaseModel) -> str:
    """Hash of the parsed body (field order and whitespace do not matter); 400 for text that
    UTF-8 cannot hold (a lone surrogate, ``"\\ud800"`` in JSON): it could be neither hashed,
    forwarded nor echoed, and every generating route hashes its body before anything else."""
    try:
        canonical = body.model_dump_json(exclude_unset=True)
    except PydanticSerializationError as e:
        raise bad_request(
            "The request has text that is not valid Unicode (a lone surrogate, such as "
            "\\ud800 without its pair); send UTF-8 text."
        ) from e
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def usage_body(usage: Usage) -> protocol.Usage:
    """The ``usage`` object of an answer."""
    return protocol.Usage(
        completion_tokens=usage.completion_tokens,
        prompt_tokens=usage.prompt_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )
