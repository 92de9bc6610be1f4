"""``POST /v1/completions`` (legacy text completions: no chat template).

``echo`` returns each prompt before its completion, and with ``logprobs`` the prompt's
log-probabilities (the first token's ``null``) in the same parallel lists — what
lm-evaluation-harness's ``local-completions`` reads for loglikelihood tasks (it sends token ids,
``echo``, ``max_tokens`` 1, ``logprobs`` 1). Echoed tokens are prompt tokens: billed as prompt
tokens, never as completion tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response

from avocado_llm.billing import Plan
from avocado_llm.serve import protocol as p
from avocado_llm.serve.admission import admit, build_prompt
from avocado_llm.serve.deps import KeyDep, ServicesDep
from avocado_llm.serve.engine import Delta, Engine, Prompt, SamplingOptions, TokenLogprob, Usage
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
    check_echo(key.plan, body)
    check_plan(key.plan, max_tokens=body.max_tokens, n=body.n, top_logprobs=body.logprobs)
    texts = prompt_list(body.prompt)
    digest = body_hash("completions", body)
    longest = max(len(text) for text in texts)  # characters, or token ids (one char or more)
    await admit(request, services, key, longest_chars=longest, param="prompt", body_hash=digest)
    prompts = await build_prompt(request, lambda: [text_prompt(engine, t) for t in texts])
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
        echo=body.echo,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    call = Call("completions", key, prompts, options, body.stream, include_usage, digest)
    formatter = CompletionFormatter(engine.model, body.logprobs is not None)
    return await respond(request, services, call, formatter)


def check_echo(plan: Plan, body: p.CompletionRequest) -> None:
    """``max_tokens`` 0 only with ``echo``; prompt log-probabilities only on a plan with
    log-probabilities (the echoed text alone is the client's own, on any plan)."""
    if body.max_tokens == 0 and not body.echo:
        raise bad_request(
            "max_tokens is 0, so there is nothing to answer; ask for at least 1 token, or set "
            "echo to true to get the prompt back (with logprobs: its log-probabilities)",
            param="max_tokens",
        )
    if body.echo and body.logprobs is not None and not plan.logprobs:
        raise bad_request(
            f"echo with logprobs returns the prompt's log-probabilities, and log-probabilities "
            f"are not available on your plan ({plan.name!r}); remove 'logprobs', or use a key "
            "whose plan allows them",
            param="logprobs",
        )


def prompt_list(
    prompt: str | list[str] | list[int] | list[list[int]],
) -> list[str] | list[list[int]]:
    """The request's prompts: texts, or lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]
    return prompt  # type: ignore[return-value]


def text_prompt(engine: Engine, prompt: str | list[int]) -> Prompt:
    """A text prompt as the engine tokenizes it; token ids as they are (the engine checks
    them against its vocabulary)."""
    if isinstance(prompt, str):
        return engine.text_prompt(prompt)
    return Prompt(tokens=len(prompt), token_ids=tuple(prompt))


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
            top_logprobs=[None if t.logprob is None else dict(t.top) for t in items],
        )
