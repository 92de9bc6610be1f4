"""``POST /v1/responses`` (OpenAI's Responses API), run as a chat completion.

The request is translated into the chat request it is (:mod:`avocado_llm.serve.responses_request`:
messages, function tools, calls and their outputs, ``text.format`` as ``response_format``) and
goes the chat path: the same model, plan and feature checks (``serve/tools.py``), admission
(rate limit, size, credit), prompt, hold, idempotency, metering and watermark, on whichever
engine serves (in process or upstream). Only the shapes differ: the answer and the stream are
:mod:`avocado_llm.serve.responses_format`'s.

Responses are not stored: ``store: true`` and ``previous_response_id`` are refused with a 400
that says so, and ``GET``/``DELETE /v1/responses/{response_id}`` answer 404.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Request, Response

from avocado_llm.serve import responses_protocol as r
from avocado_llm.serve import tools as t
from avocado_llm.serve.admission import admit, build_prompt, conversation_chars
from avocado_llm.serve.deps import KeyDep, ServicesDep
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.errors import STREAM, APIError, bad_request
from avocado_llm.serve.metering import respond
from avocado_llm.serve.responses_format import ResponsesFormatter
from avocado_llm.serve.responses_request import Echo, to_chat
from avocado_llm.serve.serving import Call, body_hash, check_model, check_plan, resolve_max_tokens

router = APIRouter()

EVENTS = {
    200: {
        **STREAM[200],
        "description": "The response; with ``stream``, server-sent events (``event: <type>``, "
        "``data: <JSON event>``) from ``response.created`` to ``response.completed``, "
        "``response.incomplete`` or ``response.failed``",
    }
}
"""The 200 of ``POST /v1/responses`` (its stream has no ``[DONE]``)."""
NOT_STORED = (
    "this server does not store responses, so there is none to retrieve or delete: keep the "
    "answer of POST /v1/responses, and send earlier turns in 'input'"
)


@router.post("/responses", response_model=r.ResponseObject, responses=EVENTS)
async def create_response(
    body: r.ResponseCreateRequest, request: Request, services: ServicesDep, key: KeyDep
) -> Response:
    """Answer ``input`` (a string, or items) — or stream the answer as Responses events —
    run and metered as the chat completion it translates to."""
    engine = services.engine
    check_model(engine, key, body.model)
    digest = body_hash("responses", body)  # first: a 400 for text UTF-8 cannot hold
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
    chat, messages = to_chat(body)
    with _in_responses_terms():
        check_plan(key.plan, max_tokens=body.max_output_tokens, n=1, top_logprobs=None)
        tools, response_format = t.check_chat(key.plan, engine, chat)
    chars = conversation_chars(messages, tools)
    await admit(request, services, key, longest_chars=chars, param="input", body_hash=digest)
    with _in_responses_terms():
        if schemas := t.schemas_of(tools, response_format):  # CPU: after admission, off the loop
            await build_prompt(request, t.check_meta, schemas)
    try:
        prompt = await build_prompt(request, engine.chat_prompt, messages, tools)
    except ValueError as e:
        raise bad_request(str(e), "input") from e
    with _in_responses_terms():
        max_tokens = resolve_max_tokens(
            services, key.plan, [prompt], body.max_output_tokens, key.plan.max_tokens
        )
    options = SamplingOptions(
        max_tokens=max_tokens,
        temperature=chat.temperature,
        top_p=chat.top_p,
        tool_choice=t.tool_choice(chat) if tools else None,
        parallel_tool_calls=chat.parallel_tool_calls,
        response_format=response_format,
    )
    call = Call("responses", key, [prompt], options, body.stream, True, digest)
    formatter = ResponsesFormatter(engine.model, Echo.of(body))
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


_TERMS = (
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
)
_TOOL_FUNCTION = re.compile(r"tools\[(\d+)\]\.function")


def _responses_terms(text: str) -> str:
    text = _TOOL_FUNCTION.sub(r"tools[\1]", text)
    for chat_name, name in _TERMS:
        text = text.replace(chat_name, name)
    return text


@contextmanager
def _in_responses_terms() -> Iterator[None]:
    """The chat checks' 400s name chat's parameters (``max_tokens``, ``messages``,
    ``response_format.json_schema.schema``, ``tools[0].function.parameters``); here they are
    ``max_output_tokens``, ``input``, ``text.format.schema``, ``tools[0].parameters``."""
    try:
        yield
    except APIError as e:
        e.message = _responses_terms(e.message)
        e.param = _responses_terms(e.param) if e.param is not None else None
        raise
