"""``POST /v1/responses`` (OpenAI's Responses API), run as a chat completion.

The request is translated into chat messages (:mod:`avocado_llm.serve.responses_format`) and
goes the chat path: the same model and plan checks, admission (rate limit, size, credit),
prompt, hold, idempotency, metering and watermark, on whichever engine serves (in process or
upstream). Only the shapes differ.

Responses are not stored: ``store: true`` and ``previous_response_id`` are refused with a 400
that says so, and ``GET``/``DELETE /v1/responses/{response_id}`` answer 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Request, Response

from avocado_llm.serve import responses_protocol as r
from avocado_llm.serve.admission import admit, build_prompt
from avocado_llm.serve.deps import KeyDep, ServicesDep
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.errors import STREAM, APIError, bad_request
from avocado_llm.serve.metering import respond
from avocado_llm.serve.responses_format import Echo, ResponsesFormatter, to_messages
from avocado_llm.serve.serving import Call, body_hash, check_model, check_plan, resolve_max_tokens

router = APIRouter()

NOT_STORED = (
    "this server does not store responses, so there is none to retrieve or delete: keep the "
    "answer of POST /v1/responses, and send earlier turns in 'input'"
)


@router.post("/responses", response_model=r.ResponseObject, responses=STREAM)
async def create_response(
    body: r.ResponseCreateRequest, request: Request, services: ServicesDep, key: KeyDep
) -> Response:
    """Answer ``input`` (a string, or message items) — or stream the answer as Responses
    events — metered as a chat completion."""
    engine = services.engine
    check_model(engine, key, body.model)
    if body.store:
        raise bad_request(
            "store: true is not supported: this server does not store responses; leave "
            "'store' out or send false",
            "store",
        )
    if body.previous_response_id is not None:
        raise bad_request(
            "previous_response_id is not supported: this server does not store responses; "
            "send the earlier turns in 'input'",
            "previous_response_id",
        )
    with _as_max_output_tokens():
        check_plan(key.plan, max_tokens=body.max_output_tokens, n=1, top_logprobs=None)
    messages = to_messages(body)
    digest = body_hash("responses", body)
    chars = sum(len(m["content"]) for m in messages)
    await admit(request, services, key, longest_chars=chars, param="input", body_hash=digest)
    try:
        prompt = await build_prompt(request, engine.chat_prompt, messages)
    except ValueError as e:
        raise bad_request(str(e), "input") from e
    with _as_max_output_tokens():
        max_tokens = resolve_max_tokens(
            services, key.plan, [prompt], body.max_output_tokens, key.plan.max_tokens
        )
    echo = Echo.of(body)
    options = SamplingOptions(max_tokens=max_tokens, temperature=echo.temperature, top_p=echo.top_p)
    call = Call("responses", key, [prompt], options, body.stream, True, digest)
    formatter = ResponsesFormatter(engine.model, echo)
    return await respond(request, services, call, formatter, formatter)


@router.get("/responses/{response_id}")
async def retrieve_response(response_id: str) -> Response:
    """Always 404: responses are not stored."""
    raise _not_stored(response_id)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str) -> Response:
    """Always 404: responses are not stored."""
    raise _not_stored(response_id)


def _not_stored(response_id: str) -> APIError:
    return APIError(
        404,
        f"No response found with id {response_id[:100]!r}: {NOT_STORED}.",
        param="response_id",
        code="not_found",
    )


@contextmanager
def _as_max_output_tokens() -> Iterator[None]:
    """The chat checks' 400s name ``max_tokens`` and ``messages``; here the parameters are
    ``max_output_tokens`` and ``input``."""
    try:
        yield
    except APIError as e:
        if e.param in ("max_tokens", "messages"):
            e.param = "max_output_tokens" if e.param == "max_tokens" else "input"
            e.message = e.message.replace("max_tokens", "max_output_tokens")
        raise
