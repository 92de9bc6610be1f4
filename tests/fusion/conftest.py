"""Hand-built harvest records for the fusion tests: rows of the real SCHEMA, made by the
harvest's own ``record_row``, with one token per character so that every log-probability is
placed exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from avocado_llm.fusion.records import answer_span
from avocado_llm.harvest import SCHEMA, record_key, record_row
from avocado_llm.teachers import Completion, SamplingParams, TeacherInfo, TokenLogprobs
from avocado_llm.world.tasks import Example

PARAMS = SamplingParams(max_new_tokens=16, top_logprobs=2)


@dataclass
class Records:
    """``add(...)`` answers, then ``table()``."""

    rows: list[dict] = field(default_factory=list)

    def add(
        self,
        teacher: str,
        prompt: str,
        text: str,
        *,
        family: str = "arithmetic",
        gold: str = "0",
        logprob: float = -0.1,
        frame_logprob: float = 0.0,
        sample: int = 0,
        logprobs: bool = True,
    ) -> Records:
        """One answer: ``logprob`` on each character of the answer, ``frame_logprob`` on the
        rest ("The answer is", the full stop)."""
        example = Example(
            id=prompt,
            family=family,
            split="train",
            messages=[{"role": "user", "content": f"question {prompt}?"}],
            answer=gold,
        )
        info = TeacherInfo(teacher, f"zoo/{teacher}", "sha256:test", "test licence")
        start, end = answer_span(text)
        positions = [
            TokenLogprobs(i, ch, lp, [i, i + 1], [ch, "x"], [lp, lp - 1.0])
            for i, ch in enumerate(text)
            for lp in [logprob if start <= i < end else frame_logprob]
        ]
        completion = Completion(
            text=text,
            finish_reason="stop",
            token_ids=list(range(len(text))),
            logprobs=positions if logprobs else None,
            prompt_tokens=5,
            completion_tokens=len(text) + 1,
        )
        key = record_key(info, example.messages, PARAMS, sample)
        now = datetime.now(UTC)
        self.rows.append(record_row(key, example, info, PARAMS, sample, completion, now))
        return self

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=SCHEMA)


@pytest.fixture
def records() -> Callable[[], Records]:
    return Records


class FakeScorer:
    """Scores a completion by a table of text → log-probability per token (default -5),
    spread over one token per character; remembers what it was asked."""

    def __init__(self, likes: dict[str, float], default: float = -5.0) -> None:
        self.likes, self.default, self.calls = likes, default, []

    def score_sync(self, conversations: list, completions: list[str]) -> list[list[float]]:
        self.calls.append(list(completions))
        return [[self.likes.get(c, self.default)] * max(len(c), 1) for c in completions]


@pytest.fixture
def fake_scorer() -> type[FakeScorer]:
    return FakeScorer
