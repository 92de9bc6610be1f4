"""Harvest records as fusion sees them: grouped by prompt, each answer normalised and given a
confidence.

This module is the only place fusion reads a record's ``gold`` column, and it blanks it for the
unverified families while it reads, so no strategy can look at gold there, by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from avocado_llm.world.tasks import normalize

COLUMNS = [
    "key",
    "prompt_id",
    "family",
    "messages",
    "gold",
    "teacher",
    "sample_index",
    "completion",
    "tokens",
    "token_logprobs",
]
"""What fusion reads of a harvest record (no top-k: that is for distillation)."""
# How tokenizers spell a leading space or a newline in their token strings: byte-level BPE
# (GPT-2, Qwen, gpt-oss) and SentencePiece (Gemma).
_SPACE_MARKERS = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n"})


@dataclass(frozen=True)
class Candidate:
    """One teacher answer to one prompt."""

    teacher: str
    key: str
    """The harvest record's key."""
    text: str
    """The exact completion: what a target built from this answer is."""
    answer: str
    """``tasks.normalize(text)``: what votes compare (``"The answer is 42."`` → ``"42"``)."""
    surface: str
    """The answer as written, case kept: ``"Ostrel"`` in ``"The answer is Ostrel."``."""
    frame: tuple[str, str]
    """What the teacher wrote before and after the answer (``("The answer is ", ".")``)."""
    confidence: float | None
    """Mean token log-probability of the tokens that spell the answer (all tokens when they
    cannot be aligned with the text); ``None`` when the teacher gave no log-probabilities."""

    def phrase(self, surface: str) -> str:
        """Another answer, written the way this teacher writes its own."""
        return self.frame[0] + surface + self.frame[1]


@dataclass
class Prompt:
    """Every answer to one prompt."""

    prompt_id: str
    family: str
    messages: list[dict[str, str]]
    gold: str | None
    """``None`` for unverified families (and for prompts that came without one)."""
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def teachers(self) -> list[str]:
        return sorted({c.teacher for c in self.candidates})

    def by_answer(self) -> dict[str, list[Candidate]]:
        groups: dict[str, list[Candidate]] = {}
        for c in self.candidates:
            groups.setdefault(c.answer, []).append(c)
        return groups


def answer_span(text: str) -> tuple[int, int]:
    """Where the normalised answer sits in ``text`` (all of it when it cannot be found)."""
    answer = normalize(text)
    lower = text.lower()
    start = lower.rfind(answer) if answer and len(lower) == len(text) else -1
    return (start, start + len(answer)) if start >= 0 else (0, len(text))


def answer_confidence(
    text: str, span: tuple[int, int], tokens: list[str] | None, logprobs: list[float] | None
) -> float | None:
    """Mean log-probability of the tokens that overlap ``span``.

    Only the answer's tokens count: a teacher that always writes "The answer is …" would
    otherwise look sure of every answer, its boilerplate tokens being near-certain.
    """
    if not logprobs:
        return None
    pieces = [t.translate(_SPACE_MARKERS) for t in tokens or []]
    spelled = "".join(pieces)
    if len(pieces) != len(logprobs) or spelled.strip() != text:  # e.g. non-ASCII bytes
        return sum(logprobs) / len(logprobs)
    end = -(len(spelled) - len(spelled.lstrip()))  # the decoded text lost its leading space
    chosen = []
    for piece, logprob in zip(pieces, logprobs, strict=True):
        start, end = end, end + len(piece)
        if start < span[1] and end > span[0]:
            chosen.append(logprob)
    chosen = chosen or logprobs
    return sum(chosen) / len(chosen)


def group_prompts(records: pa.Table, unverified: set[str]) -> list[Prompt]:
    """Records grouped by prompt, in order of first appearance; candidates by teacher, sample.

    Gold is dropped for ``unverified`` families. Answers that normalise to nothing (empty
    completions) are left out: they are never a target.
    """
    missing = [c for c in COLUMNS if c not in records.schema.names]
    if missing:
        raise ValueError(f"not a harvest table: columns {missing} are missing")
    rows = records.select(COLUMNS).to_pylist()
    rows.sort(key=lambda r: (r["teacher"], r["sample_index"]))
    order = {pid: i for i, pid in reversed(list(enumerate(records["prompt_id"].to_pylist())))}
    prompts: dict[str, Prompt] = {}
    for row in rows:
        prompt = prompts.get(row["prompt_id"])
        if prompt is None:
            gold = None if row["family"] in unverified else row["gold"]
            prompt = Prompt(row["prompt_id"], row["family"], row["messages"], gold)
            prompts[row["prompt_id"]] = prompt
        candidate = _candidate(row)
        if candidate.answer:
            prompt.candidates.append(candidate)
    return sorted(prompts.values(), key=lambda p: order[p.prompt_id])


def _candidate(row: dict[str, Any]) -> Candidate:
    text = row["completion"]
    start, end = answer_span(text)
    confidence = answer_confidence(text, (start, end), row["tokens"], row["token_logprobs"])
    if confidence is not None and not math.isfinite(confidence):
        confidence = -math.inf
    return Candidate(
        teacher=row["teacher"],
        key=row["key"],
        text=text,
        answer=normalize(text),
        surface=text[start:end],
        frame=(text[:start], text[end:]),
        confidence=confidence,
    )
