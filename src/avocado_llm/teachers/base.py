"""The teacher protocol: chat prompts and sampling parameters in, ``n`` answers per prompt out.

Every teacher — a local checkpoint (:mod:`avocado_llm.teachers.hf`) or an OpenAI-compatible
endpoint (:mod:`avocado_llm.teachers.openai_compat`) — answers with the same
:class:`Completion` records, so the harvest does not care where an answer came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, runtime_checkable

from avocado_llm.teachers.redact import redact

Messages = list[dict[str, str]]
FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How a teacher is asked. Part of every record's key: change one and it is a new record."""

    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    max_new_tokens: int = 32
    n: int = 1
    """Answers per prompt."""
    top_logprobs: int = 20
    """Alternatives kept per generated position (0: none)."""
    seed: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated position: the sampled token and the teacher's top-k alternatives.

    Log-probabilities are the model's raw distribution (temperature 1, before top-p), so that
    distillation sees the teacher's beliefs, not the sampler's.
    """

    token_id: int | None
    """``None`` when an endpoint gives token strings only."""
    token: str
    logprob: float
    top_ids: list[int | None]
    top_tokens: list[str]
    top_logprobs: list[float]


@dataclass
class Completion:
    """One answer of a teacher to one prompt."""

    text: str
    finish_reason: FinishReason
    token_ids: list[int] | None = None
    """The generated tokens in the teacher's own tokenizer, end-of-turn marker excluded."""
    logprobs: list[TokenLogprobs] | None = None
    """Per generated position; ``None`` when the teacher gives none."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None
    """Reasoning text kept apart from the answer (vLLM's ``reasoning_content`` for gpt-oss)."""
    latency_s: float = 0.0


@dataclass(frozen=True)
class TeacherInfo:
    """Provenance written on every record."""

    name: str
    model: str
    """Model path or served model name."""
    revision: str
    """Weights hash (local) or the endpoint's model id and base URL."""
    licence: str
    tokenizer: str = ""
    """Tokenizer family/type, for the reader of the harvest."""
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Teacher(Protocol):
    info: TeacherInfo

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        """``params.n`` completions for each conversation, in order."""
        ...

    async def aclose(self) -> None: ...


class TeacherError(RuntimeError):
    """A teacher failed in a way that retrying will not fix (bad request, wrong model name).

    The message is redacted (:func:`~avocado_llm.teachers.redact.redact`): an endpoint's key
    never reaches a log through it."""

    def __init__(self, teacher: str, message: str) -> None:
        self.reason = redact(message)
        """The message without the teacher's name."""
        super().__init__(f"teacher {teacher!r}: {self.reason}")
        self.teacher = teacher


class BadAnswer(TeacherError):
    """One conversation's answer is unusable (malformed, out of range, too big or too slow, or
    refused by the server for its content); the batch's other answers may be fine."""


class PartialAnswers(TeacherError):
    """Some conversations of a batch were answered and others not: ``answers[i]`` is ``None``
    where conversation ``i`` failed, and ``errors[i]`` then says why."""

    def __init__(
        self, teacher: str, answers: list[list[Completion] | None], errors: list[str | None]
    ) -> None:
        failed = [e for e in errors if e is not None]
        super().__init__(
            teacher, f"{len(failed)} of {len(errors)} answers failed; the first: {failed[0]}"
        )
        self.answers, self.errors = answers, [None if e is None else redact(e) for e in errors]
