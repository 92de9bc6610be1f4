"""What a request must pass before the server spends CPU on its prompt.

Rendering and tokenizing a prompt costs time in proportion to its size (about a second per
megabyte on one core). Done on the event loop before the key's limits, it let any key — one
with no credit too — stall every other request for free. So each request first passes, in
this order and each of them cheap:

1. the key's requests per minute: every authenticated request counts, answered or refused
   (as OpenAI counts them), in a bucket of its own (``<key id>/admission``) taken before
   the metering's own (which takes the request again, with its tokens, once they are known);
2. the prompt's size in characters, against the most characters that a prompt fitting the
   context can have (:func:`max_prompt_chars`): a larger one is refused without tokenizing;
3. the account's credit: an account with none is refused (``insufficient_quota``) before any
   tokenizing, unless the model is free or the request replays a stored answer
   (``Idempotency-Key``); an account seen with credit is not read again for ``key_cache_s``.

Then the prompt is rendered and tokenized in a worker thread (:func:`build_prompt`), one
prompt at a time, so the event loop keeps answering everyone else meanwhile.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request

from avocado_llm.billing import InsufficientCredit, KeyInfo, Price, format_usd
from avocado_llm.serve.errors import APIError, bad_request
from avocado_llm.serve.serving import Services
from avocado_llm.serve.tools import compact

T = TypeVar("T")

NORMALIZATION_SLACK = 4
"""A tokenizer's normalizer can shrink text before tokenizing it (NFC composes up to four code
points into one), so the character bound allows that much."""


@dataclass
class AdmissionState:
    """Per app: accounts recently seen with credit, and the prompt builders' limiter."""

    funded: dict[int, float] = field(default_factory=dict)
    """Account id → until when (monotonic) it counts as having credit without a ledger read."""
    builders: anyio.CapacityLimiter | None = None
    """Prompts rendered and tokenized at a time (made in the serving event loop)."""


def _state(request: Request) -> AdmissionState:
    state = getattr(request.app.state, "admission", None)
    if state is None:
        state = request.app.state.admission = AdmissionState()
    return state  # type: ignore[no-any-return]


async def admit(
    request: Request,
    services: Services,
    key: KeyInfo,
    *,
    longest_chars: int,
    param: str,
    body_hash: str,
) -> None:
    """Rate limit, size and credit, before a prompt is built (see the module's docstring).
    ``longest_chars``: characters of the longest prompt's text (a conversation's: all its
    messages'); ``param``: the request parameter that holds it."""
    _requests_per_minute(services, key)
    _size(services, longest_chars, param)
    await _credit(request, services, key, body_hash)


def conversation_chars(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """What :func:`admit` weighs of a conversation: its messages' text, earlier function calls
    and call ids, and the tools offered."""
    chars = sum(len(str(m["content"] or "")) for m in messages)
    chars += sum(len(compact(m["tool_calls"])) for m in messages if "tool_calls" in m)
    chars += sum(len(m.get("tool_call_id", "")) for m in messages)
    return chars + (len(compact(tools)) if tools else 0)


async def build_prompt(request: Request, build: Callable[..., T], *args: object) -> T:
    """``build(*args)`` (an engine's ``chat_prompt`` or ``text_prompt``) in a worker thread,
    one at a time: never on the event loop."""
    state = _state(request)
    if state.builders is None:
        state.builders = anyio.CapacityLimiter(1)
    return await anyio.to_thread.run_sync(functools.partial(build, *args), limiter=state.builders)


def max_prompt_chars(services: Services) -> int | None:
    """The most characters a prompt that fits the server's prompt limit can have; None when
    nothing bounds it (no limit, or an engine that cannot say)."""
    engine = services.engine
    limit = services.settings.max_prompt_tokens or engine.context_length
    per_token = engine.max_token_chars
    if limit is None or per_token is None:
        return None
    return limit * per_token * NORMALIZATION_SLACK


def _requests_per_minute(services: Services, key: KeyInfo) -> None:
    if key.rpm is None:
        return
    decision = services.limiter.acquire(f"{key.key_id}/admission", key.rpm, None, 0)
    if decision.allowed:
        return
    services.metrics.rate_limited.labels("requests").inc()
    raise APIError(
        429,
        f"Rate limit reached for {services.engine.model} on requests per min (RPM): Limit "
        f"{key.rpm}, Requested 1. Please try again in {decision.retry_after_s:.3g}s.",
        type="requests",
        code="rate_limit_exceeded",
        headers=decision.headers,
    )


def _size(services: Services, longest_chars: int, param: str) -> None:
    bound = max_prompt_chars(services)
    if bound is None or longest_chars <= bound:
        return
    context = services.engine.context_length
    limit = services.settings.max_prompt_tokens or context
    known = "" if context is None else f"This model's maximum context length is {context} tokens. "
    raise bad_request(
        f"{known}The prompt has {longest_chars} characters, more than any prompt of at most "
        f"{limit} tokens can have ({bound}); shorten it.",
        param=param,
        code="context_length_exceeded",
    )


async def _credit(request: Request, services: Services, key: KeyInfo, body_hash: str) -> None:
    state = _state(request)
    now = time.monotonic()
    if state.funded.get(key.account_id, 0.0) > now:
        return
    billing, model = services.billing, services.engine.model

    def read() -> tuple[int, Price | None]:
        return billing.balance(key.account), billing.price(model)

    balance, price = await services.ledger(read)
    if balance > 0:
        if services.settings.key_cache_s > 0:
            if len(state.funded) >= 10_000:
                state.funded = {a: t for a, t in state.funded.items() if t > now}
            state.funded[key.account_id] = now + services.settings.key_cache_s
        return
    if price is None or not (price.per_request or price.output_per_1m):
        return  # unpriced (the hold says so) or free to answer: the hold decides
    idem_key = request.headers.get("idempotency-key")
    if idem_key:  # a retry of an answer already paid for is replayed, whatever the balance
        stored = await services.ledger(billing.idempotent_response, key.key_id, idem_key,
                                       body_hash)  # fmt: skip
        if stored is not None:
            return
    raise InsufficientCredit(
        f"insufficient credit: the available balance is ${format_usd(max(balance, 0))}, and "
        f"every request to {model!r} costs something; add credits"
    )
