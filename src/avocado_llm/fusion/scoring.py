"""Teachers as scorers: how likely a teacher finds an answer, for ``min_ce`` and ``judge``.

A scorer reads an answer teacher-forced after the prompt, in its own chat template
(:meth:`avocado_llm.teachers.hf.LocalTeacher.score_sync`). Each candidate answer is written the
way the scorer writes its own answer to the same prompt — qwen-tiny reads "The answer is 42."
where gemma-tiny wrote "42" — so that a scorer is asked about the answer, not about a phrasing
it never produces (every bare "42" would surprise qwen-tiny at its first token, whatever the
number). A scorer that did not answer the prompt reads the bare answer.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from avocado_llm.fusion.records import Candidate, Prompt
from avocado_llm.teachers.base import Messages


@runtime_checkable
class Scorer(Protocol):
    """Anything that gives per-token log-probabilities of completions (a ``LocalTeacher``)."""

    def score_sync(
        self, conversations: list[Messages], completions: list[str]
    ) -> list[list[float]]:
        """Per completion, the log-probability of each of its tokens after its conversation."""
        ...


def representative(group: list[Candidate]) -> Candidate:
    """The answer's most confident spelling among the candidates that gave it."""
    return max(group, key=confidence)


def confidence(candidate: Candidate) -> float:
    return -math.inf if candidate.confidence is None else candidate.confidence


def score_answers(
    name: str, scorer: Scorer, prompts: list[Prompt], answers: list[dict[str, Candidate]]
) -> list[dict[str, list[float]]]:
    """Per prompt: normalised answer → per-token log-probs of it under ``scorer`` (one call)."""
    conversations, completions, where = [], [], []
    for i, (prompt, reps) in enumerate(zip(prompts, answers, strict=True)):
        own = next((c for c in prompt.candidates if c.teacher == name), None)
        for answer, candidate in reps.items():
            conversations.append(prompt.messages)
            completions.append(own.phrase(candidate.surface) if own else candidate.surface)
            where.append((i, answer))
    logprobs = scorer.score_sync(conversations, completions) if completions else []
    if len(logprobs) != len(completions):
        raise RuntimeError(
            f"scorer {name!r} returned {len(logprobs)} scores for {len(completions)} completions"
        )
    scores: list[dict[str, list[float]]] = [{} for _ in prompts]
    for (i, answer), values in zip(where, logprobs, strict=True):
        scores[i][answer] = values
    return scores


def cross_entropy(logprobs: list[float], answer: str) -> float:
    """Nats per character of ``answer`` that a scorer spends on it (infinite when unscored).

    Per character, not per token: teachers tokenize differently (gemma-tiny spells a capital in
    one token, qwen-tiny in four) and wrap answers in near-certain boilerplate, so a mean per
    token would compare scorers on their tokenizers and phrasings, not on the answer.
    """
    return -sum(logprobs) / max(len(answer), 1) if logprobs else math.inf


def shares(scores: dict[str, float]) -> dict[str, float]:
    """Softmax of log-scores: each answer's share of the likelihood among the candidates."""
    top = max(scores.values())
    if not math.isfinite(top):
        return {a: 1 / len(scores) for a in scores}
    exp = {a: math.exp(s - top) for a, s in scores.items()}
    total = sum(exp.values())
    return {a: e / total for a, e in exp.items()}
