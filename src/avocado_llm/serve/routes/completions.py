"""``POST /v1/completions`` (legacy text completions: no chat template)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response

from avocado_llm.serve import protocol as p
from avocado_llm.serve.admission import admit, build_prompt
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


@router.post("/completions", response_model=p.Completion, responses=STREAM)
async def create_completion(
    body: p.CompletionRequest, request: Request, services: ServicesDep, key: KeyDep
) -> Response:
    """Continue one prompt or several; choice ``i * n + j`` is prompt ``i``'s ``j``-th sample."""
    engine = services.engine
    check_model(engine, key, body.model)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    check_plan(key.plan, max_tokens=body.max_tokens, n=body.n, top_logprobs=body.logprobs)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    digest = body_hash("completions", body)
    longest = max(len(text) for text in texts)
    await admit(request, services, key, longest_chars=longest, param="prompt", body_hash=digest)
    prompts = await build_prompt(request, lambda: [engine.text_prompt(t) for t in texts])
    default = services.settings.default_completion_max_tokens
    max_tokens = resolve_max_tokens(services, key.plan, prompts, body.max_tokens, default)
    options = SamplingOptions(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stops(body.stop),
        seed=body.seed,
        n=body.n,
        logprobs=body.logprobs,
        ignore_eos=body.ignore_eos,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    call = Call("completions", key, prompts, options, body.stream, include_usage, digest)
    formatter = CompletionFormatter(engine.model, body.logprobs is not None)
    return await respond(request, services, call, formatter)


@dataclass
class CompletionFormatter:
    """Legacy completion shapes; remembers each choice's text offset for its logprobs."""

    model: str
    logprobs: bool
    offsets: dict[int, int] = field(default_factory=dict)

    def answer(
        self, rid: str, created: int, choices: list[ChoiceResult], usage: Usage
    ) -> p.Completion:
        return p.Completion(
            id=rid,
            choices=[
                p.CompletionChoice(
                    finish_reason=c.finish_reason or "stop",
                    index=c.index,
                    logprobs=self._logprobs(c.index, c.logprobs),
                    text=c.text,
                )
                for c in choices
            ],
            created=created,
            model=self.model,
            usage=usage_body(usage),
        )

    def opening(self, rid: str, created: int, n_choices: int) -> list[p.Completion]:
        return []

    def chunk(self, rid: str, created: int, delta: Delta) -> p.Completion:
        choice = p.CompletionChoice(
            finish_reason=delta.finish_reason,
            index=delta.index,
            logprobs=self._logprobs(delta.index, delta.logprobs),
            text=delta.text,
        )
        return p.Completion(id=rid, choices=[choice], created=created, model=self.model)

    def usage_chunk(self, rid: str, created: int, usage: Usage) -> p.Completion:
        return p.Completion(
            id=rid, choices=[], created=created, model=self.model, usage=usage_body(usage)
        )

    def _logprobs(self, index: int, items: list[TokenLogprob]) -> p.CompletionLogprobs | None:
        if not self.logprobs:
            return None
        offsets = []
        for t in items:
            offsets.append(self.offsets.get(index, 0))
            self.offsets[index] = offsets[-1] + len(t.token)
        return p.CompletionLogprobs(
            text_offset=offsets,
            token_logprobs=[t.logprob for t in items],
            tokens=[t.token for t in items],
            top_logprobs=[dict(t.top) for t in items],
        )
