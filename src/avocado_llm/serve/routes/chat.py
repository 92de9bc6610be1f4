"""``POST /v1/chat/completions``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from avocado_llm.serve import protocol as p
from avocado_llm.serve import tools as t
from avocado_llm.serve.admission import admit, build_prompt, conversation_chars
from avocado_llm.serve.deps import KeyDep, ServicesDep
from avocado_llm.serve.engine import Delta, SamplingOptions, TokenLogprob, Usage
from avocado_llm.serve.errors import STREAM, bad_request
from avocado_llm.serve.metering import respond
from avocado_llm.serve.serving import (
    Call,
    ChoiceResult,
    body_hash,
    check_model,
    check_plan,
    resolve_max_tokens,
    stops,
    usage_body,
)

router = APIRouter()


@router.post("/chat/completions", response_model=p.ChatCompletion, responses=STREAM)
async def create_chat_completion(
    body: p.ChatCompletionRequest, request: Request, services: ServicesDep, key: KeyDep
) -> Response:
    """Answer a conversation (or stream the answer as ``chat.completion.chunk`` events)."""
    engine = services.engine
    check_model(engine, key, body.model)
    digest = body_hash("chat", body)  # first: a 400 for text UTF-8 cannot hold
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    requested = body.max_completion_tokens or body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    check_plan(key.plan, max_tokens=requested, n=body.n, top_logprobs=top)
    tools, response_format = t.check_chat(key.plan, engine, body)
    messages = [_message(m) for m in body.messages]
    chars = conversation_chars(messages, tools)
    await admit(request, services, key, longest_chars=chars, param="messages", body_hash=digest)
    if schemas := t.schemas_of(tools, response_format):  # CPU: after admission, off the loop
        await build_prompt(request, t.check_meta, schemas)
    try:
        prompt = await build_prompt(request, engine.chat_prompt, messages, tools)
    except ValueError as e:
        raise bad_request(str(e), "messages") from e
    max_tokens = resolve_max_tokens(services, key.plan, [prompt], requested, key.plan.max_tokens)
    options = SamplingOptions(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stops(body.stop),
        seed=body.seed,
        n=body.n,
        logprobs=top,
        ignore_eos=body.ignore_eos,
        tool_choice=t.tool_choice(body) if tools else None,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=response_format,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    call = Call("chat", key, [prompt], options, body.stream, include_usage, digest)
    return await respond(request, services, call, ChatFormatter(engine.model, top is not None))


def _message(m: p.ChatMessage) -> dict[str, Any]:
    """A message as the engine gets it (``developer`` is ``system``)."""
    role = "system" if m.role == "developer" else m.role
    if m.tool_calls:  # an earlier turn's calls: its content may be null
        calls = [c.model_dump() for c in m.tool_calls]
        return {"role": role, "content": None if m.content is None else m.text(),
                "tool_calls": calls}  # fmt: skip
    if m.tool_call_id is not None:
        return {"role": role, "content": m.text(), "tool_call_id": m.tool_call_id}
    return {"role": role, "content": m.text()}


@dataclass(frozen=True)
class ChatFormatter:
    """Chat response shapes."""

    model: str
    logprobs: bool

    def answer(
        self, rid: str, created: int, choices: list[ChoiceResult], usage: Usage
    ) -> p.ChatCompletion:
        return p.ChatCompletion(
            id=rid,
            choices=[
                p.ChatChoice(
                    finish_reason=c.finish_reason or "stop",
                    index=c.index,
                    logprobs=self._logprobs(c.logprobs),
                    message=self._message(c),
                )
                for c in choices
            ],
            created=created,
            model=self.model,
            usage=usage_body(usage),
        )

    @staticmethod
    def _message(c: ChoiceResult) -> p.ChatMessageOut:
        if not c.tool_calls:
            return p.ChatMessageOut(content=c.text)
        calls = t.merge_calls(c.tool_calls)
        return p.ChatMessageOut(content=c.text or None, tool_calls=calls)

    def opening(self, rid: str, created: int, n_choices: int) -> list[p.ChatCompletionChunk]:
        """OpenAI's first chunk: the role of every choice, no text yet."""
        role = [
            p.ChunkChoice(delta=p.ChunkDelta(role="assistant", content=""), index=i)
            for i in range(n_choices)
        ]
        return [p.ChatCompletionChunk(id=rid, choices=role, created=created, model=self.model)]

    def chunk(self, rid: str, created: int, delta: Delta) -> p.ChatCompletionChunk:
        choice = p.ChunkChoice(
            delta=p.ChunkDelta(
                content=delta.text or None, tool_calls=t.call_pieces(delta.tool_calls)
            ),
            finish_reason=delta.finish_reason,
            index=delta.index,
            logprobs=self._logprobs(delta.logprobs),
        )
        return p.ChatCompletionChunk(id=rid, choices=[choice], created=created, model=self.model)

    def usage_chunk(self, rid: str, created: int, usage: Usage) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=rid, choices=[], created=created, model=self.model, usage=usage_body(usage)
        )

    def _logprobs(self, items: list[TokenLogprob]) -> p.ChoiceLogprobs | None:
        if not self.logprobs:
            return None
        return p.ChoiceLogprobs(
            content=[
                p.TokenLogprobEntry(
                    token=t.token,
                    bytes=list(t.token.encode()),
                    logprob=t.logprob,
                    top_logprobs=[
                        p.TopLogprob(token=s, bytes=list(s.encode()), logprob=v) for s, v in t.top
                    ],
                )
                for t in items
            ]
        )
