"""The money path of one request, the same for chat and completions:

    claim Idempotency-Key (replay a stored answer) → rate limit → hold the worst case
    → generate → settle the tokens produced (or release the hold if the engine failed)

Settling happens before the client gets the last bytes (the usage chunk and ``[DONE]`` of a
stream), so once a client has its whole answer, its balance already shows the charge. A stream
the client leaves is settled for the tokens produced up to then, in a ``finally`` that runs in
a cancellation-shielded scope — whether the hang-up cancelled the generator mid-``await`` or
while it waited on a ``yield`` (:class:`MeteredStream` closes it then).

Holds are placed under this process's lease (``billing.leases``): no other server releases
them while it lives. Before every chunk of text, a stream checks that the lease still covers
its hold; if the lease lapsed (the process stalled for longer than it, and another server may
have released the hold), the stream stops with an error event, settling what was produced if
the hold is still open — it never goes on streaming text that nobody may pay for. Settlement
itself requires the hold to be open (``expect_open``): a released hold is never answered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from avocado_llm.billing import Hold, HoldClosed
from avocado_llm.billing.leases import ServerLease
from avocado_llm.protect.serving import account_watermark
from avocado_llm.serve.engine import EngineError, Generation, Usage
from avocado_llm.serve.errors import APIError, bad_request, envelope
from avocado_llm.serve.serving import Call, ChoiceResult, Formatter, Services

log = logging.getLogger("avocado.serve")

STOP_WAIT_S = 30.0  # longest wait for the engine to stop a cancelled request
LEASE_POLL_S = 0.05  # how often a stream whose lease is late looks for the heartbeat's verdict
LEASE_LOST = (
    "this server lost its lease on the ledger while it streamed (it stalled for longer than "
    "the lease), so the stream stopped; any text sent was charged if the hold was still open, "
    "else nothing was: retry the request"
)


class MeteredStream(StreamingResponse):
    """A stream whose generator is always closed when the response ends, so that its
    ``finally`` (settlement) runs at once, also after the client hung up — and whose request
    is settled even when the generator never started (the client left before the response
    began: closing an unstarted generator runs none of its code)."""

    def __init__(self, meter: Meter, generation: Generation, body: AsyncIterator[bytes],
                 headers: dict[str, str]) -> None:  # fmt: skip
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._meter, self._generation, self._body = meter, generation, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()  # type: ignore[attr-defined]
                if not self._meter.closed:  # never started: stop, release (or settle) it here
                    await self._meter.stop(self._generation, failed=False)


class EventStream(Protocol):
    """How a stream writes its events: OpenAI's chunk streams (:class:`ChunkStream`), or the
    Responses API's typed events."""

    def event(self, item: BaseModel | dict[str, Any]) -> bytes:
        """One server-sent event."""
        ...

    def closing(self, rid: str, created: int, usage: Usage) -> bytes:
        """Everything after the last text (sent once the request is settled)."""
        ...

    def failure(self, message: str, code: str | None) -> bytes:
        """The event(s) that end a stream that failed."""
        ...


@dataclass
class ChunkStream:
    """Chat and legacy completions: ``data: <chunk>`` events, then the usage chunk (when
    ``stream_options.include_usage``) and ``data: [DONE]``; a failure is an error envelope."""

    fmt: Formatter
    include_usage: bool

    def event(self, item: BaseModel | dict[str, Any]) -> bytes:
        data = item.model_dump_json() if isinstance(item, BaseModel) else _json(item)
        return f"data: {data}\n\n".encode()

    def closing(self, rid: str, created: int, usage: Usage) -> bytes:
        tail = self.event(self.fmt.usage_chunk(rid, created, usage)) if self.include_usage else b""
        return tail + b"data: [DONE]\n\n"

    def failure(self, message: str, code: str | None) -> bytes:
        return self.event(envelope(message, "server_error", None, code))


async def respond(
    request: Request,
    services: Services,
    call: Call,
    fmt: Formatter,
    events: EventStream | None = None,
) -> Response:
    """Run ``call`` with metering and answer it (JSON or SSE); a stream's events are
    ``events``' (by default OpenAI's chunks, :class:`ChunkStream`)."""
    started = time.perf_counter()
    billing, key = services.billing, call.key
    idem_key = request.headers.get("idempotency-key")
    if idem_key is not None:
        if not 1 <= len(idem_key) <= 255:
            raise bad_request("Idempotency-Key must be 1 to 255 characters", "Idempotency-Key")
        server_id = services.lease.server_id if services.lease is not None else None
        stored = await services.ledger(
            billing.claim_idempotency, key.key_id, idem_key, call.body_hash, server_id
        )
        if stored is not None:
            media = "text/event-stream" if call.stream else "application/json"
            return Response(stored, media_type=media, headers={"Idempotent-Replayed": "true"})
    try:
        events = events or ChunkStream(fmt, call.include_usage)
        return await _run(services, call, fmt, events, idem_key, started)
    except BaseException:
        if idem_key is not None:
            with anyio.CancelScope(shield=True):
                await services.ledger(billing.abandon_idempotency, key.key_id, idem_key)
        raise


async def _run(
    services: Services,
    call: Call,
    fmt: Formatter,
    events: EventStream,
    idem_key: str | None,
    started: float,
) -> Response:
    key, model = call.key, services.engine.model
    reserved = call.prompt_tokens + call.max_completion_tokens
    decision = services.limiter.acquire(key.key_id, key.rpm, key.tpm, reserved)
    if not decision.allowed:
        services.metrics.rate_limited.labels(decision.limit).inc()
        limit = key.rpm if decision.limit == "requests" else key.tpm
        asked = 1 if decision.limit == "requests" else reserved
        when = (
            f"Please try again in {decision.retry_after_s:.3g}s."
            if decision.retry_after_s != float("inf")
            else "This request alone is larger than the limit: lower max_tokens or n."
        )
        raise APIError(
            429,
            f"Rate limit reached for {model} on {decision.limit} per min (RPM/TPM): "
            f"Limit {limit}, Requested {asked}. {when}",
            type=decision.limit,
            code="rate_limit_exceeded",
            headers=decision.headers,
        )
    rid = f"{_ID_PREFIX.get(call.endpoint, 'cmpl-')}{uuid.uuid4().hex}"
    lease = services.lease
    server_id = lease.server_id if lease is not None else None
    try:
        hold = await services.ledger(
            services.billing.hold,
            key,
            model,
            call.prompt_tokens,
            call.max_completion_tokens,
            rid,
            server_id,
        )
    except BaseException:
        services.limiter.refund(key.key_id, key.tpm, reserved)
        raise
    meter = Meter(services, call, hold, reserved, idem_key, started, lease, server_id)
    services.metrics.in_flight.inc()
    try:
        mark = account_watermark(services.settings.secret, key)
        options = call.options if mark is None else replace(call.options, watermark=mark)
        generation = services.engine.generate(call.prompts, options)
    except EngineError as e:
        await meter.fail()
        raise APIError(e.status, e.message, code=e.code) from e
    headers = {**decision.headers, "x-request-id": rid}
    created = int(time.time())
    if call.stream:
        body = meter.stream(generation, fmt, events, rid, created)
        return MeteredStream(meter, generation, body, headers)
    return await meter.collect(generation, fmt, rid, created, headers)


class Meter:
    """Settles one held request exactly once: :meth:`finish` or :meth:`fail`."""

    def __init__(
        self,
        services: Services,
        call: Call,
        hold: Hold,
        reserved: int,
        idem_key: str | None,
        started: float,
        lease: ServerLease | None = None,
        server_id: str | None = None,
    ) -> None:
        self.services, self.call, self.hold = services, call, hold
        self.reserved, self.idem_key, self.started = reserved, idem_key, started
        self.lease, self.server_id = lease, server_id
        self.closed = False
        """Settled or released (by :meth:`finish` or :meth:`fail`)."""

    async def hold_is_ours(self) -> bool:
        """Whether no other server may have released the hold: the lease it was placed under
        is this server's and fresh. A late lease waits (up to one lease) for the heartbeat's
        verdict: renewed (True) or found gone (False)."""
        lease, server_id = self.lease, self.server_id
        if lease is None or server_id is None:
            return True  # no lease: nothing but a restart releases it (one server, tests)
        waited = 0.0
        while not lease.holds(server_id):
            if lease.lost(server_id) or waited >= lease.lease_s:
                return False
            await anyio.sleep(LEASE_POLL_S)
            waited += LEASE_POLL_S
        return True

    def usage(self, generation: Generation) -> Usage:
        """Tokens to bill: what the engine produced, never more than the worst case held."""
        u = generation.usage
        return Usage(u.prompt_tokens, min(u.completion_tokens, self.call.max_completion_tokens))

    async def finish(self, usage: Usage, status: str, answer: bytes | None) -> int:
        """Charge ``usage``; store ``answer`` for the Idempotency-Key when there is one."""
        s, key = self.services, self.call.key
        idem = None
        if self.idem_key is not None and answer is not None:
            idem = (self.idem_key, self.call.body_hash, answer)
        try:
            charge = await s.ledger(
                lambda: s.billing.settle(
                    self.hold,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    status=status,
                    idempotency=idem,
                    expect_open=True,
                )
            )
        except HoldClosed as e:
            # Another server process released the hold at its start-up while this request
            # ran: nothing was charged, so the answer is not given; a retry is charged once.
            await self.fail()
            raise APIError(503, e.message, type="server_error", code=e.code) from e
        if self.idem_key is not None and answer is None:
            await s.ledger(s.billing.abandon_idempotency, key.key_id, self.idem_key)
        used = usage.prompt_tokens + usage.completion_tokens
        s.limiter.refund(key.key_id, key.tpm, self.reserved - used)
        model = self.hold.model
        s.metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        s.metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
        s.metrics.charged.labels(model).inc(charge)
        self._done()
        return charge

    async def fail(self) -> None:
        """Nothing to bill (the engine failed, or stopped before its first token): return the
        whole hold, and let a retry with the same Idempotency-Key run."""
        s, key = self.services, self.call.key
        await s.ledger(s.billing.release, self.hold)
        if self.idem_key is not None:
            await s.ledger(s.billing.abandon_idempotency, key.key_id, self.idem_key)
        s.limiter.refund(key.key_id, key.tpm, self.reserved)
        self._done()

    def _done(self) -> None:
        self.closed = True
        m = self.services.metrics
        m.in_flight.dec()
        m.latency.labels(self.call.endpoint).observe(time.perf_counter() - self.started)

    async def stop(self, generation: Generation, failed: bool) -> None:
        """After an engine error, a hang-up or a shutdown: stop, then release or settle."""
        with anyio.CancelScope(shield=True):
            generation.cancel()
            with anyio.move_on_after(STOP_WAIT_S):
                await generation.wait_stopped()
            usage = self.usage(generation)
            if failed or usage.completion_tokens == 0:
                await self.fail()
            else:
                await self.finish(usage, "cancelled", None)

    async def collect(
        self,
        generation: Generation,
        fmt: Formatter,
        rid: str,
        created: int,
        headers: dict[str, str],
    ) -> Response:
        """A non-streamed answer: generate it all, settle, answer."""
        choices: dict[int, ChoiceResult] = {}
        try:
            async with contextlib.aclosing(generation.__aiter__()) as deltas:  # type: ignore[type-var]
                async for d in deltas:
                    choice = choices.setdefault(d.index, ChoiceResult(d.index))
                    choice.text += d.text
                    choice.logprobs += d.logprobs
                    choice.tool_calls += d.tool_calls
                    choice.finish_reason = d.finish_reason or choice.finish_reason
        except EngineError as e:
            await self.stop(generation, failed=True)
            raise APIError(e.status, e.message, code=e.code) from e
        except BaseException:
            await self.stop(generation, failed=False)
            raise
        usage = self.usage(generation)
        ordered = [choices.get(i) or ChoiceResult(i, "", "stop") for i in range(len(choices))]
        body = fmt.answer(rid, created, ordered, usage).model_dump_json().encode()
        await self.finish(usage, "ok", body)
        return Response(body, media_type="application/json", headers=headers)

    async def stream(
        self, generation: Generation, fmt: Formatter, events: EventStream, rid: str, created: int
    ) -> AsyncIterator[bytes]:
        """SSE events; settles before the usage chunk and ``[DONE]`` go out. Each chunk goes
        out only while the hold is surely this server's (:meth:`hold_is_ours`); else the stream
        ends with an error event, and so does one whose hold was released before settling."""
        sent: list[bytes] = []
        settled = failed = lease_lost = False

        def event(item: BaseModel | dict | bytes) -> bytes:
            sent.append(item if isinstance(item, bytes) else events.event(item))
            return sent[-1]

        try:
            for opening in fmt.opening(rid, created, len(self.call.prompts) * self.call.options.n):
                yield event(opening)
            async with contextlib.aclosing(generation.__aiter__()) as deltas:  # type: ignore[type-var]
                async for d in deltas:
                    if not await self.hold_is_ours():
                        lease_lost = True
                        break
                    if (chunk := fmt.chunk(rid, created, d)) is not None:
                        yield event(chunk)
            if lease_lost:
                settled = True  # stop() settles what was produced, if the hold is still open
                log.error("request %s: the lease lapsed mid-stream; stopping it", rid)
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(APIError):  # released: nothing was charged
                        await self.stop(generation, failed=False)
                yield event(events.failure(LEASE_LOST, "hold_released"))
                return
            usage = self.usage(generation)
            tail = event(events.closing(rid, created, usage))
            settled = True  # from here on, finish() alone settles it, even if the client leaves
            closed: APIError | None = None
            with anyio.CancelScope(shield=True):
                try:
                    await self.finish(usage, "ok", b"".join(sent))
                except APIError as e:  # the hold was released: no usage chunk, no [DONE]
                    closed = e
            if closed is not None:
                yield event(events.failure(closed.message, "hold_released"))
                return
            yield tail
        except EngineError as e:
            failed = not e.billable  # (#18.7) text passed on before the error is billed
            yield event(events.failure(e.message, e.code))
        finally:
            if not settled:
                await self.stop(generation, failed)


_ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_"}
"""Request ids (and answers' ``id``) by endpoint, as OpenAI spells them."""


def _json(item: dict) -> str:
    return json.dumps(item, separators=(",", ":"))
