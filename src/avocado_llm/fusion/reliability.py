"""How far to trust each teacher on a family: measured against gold where a verifier may be
used (``verified_reliability``), estimated without labels everywhere else
(``label_free_reliability``).

The label-free estimate is a light Dawid–Skene: starting from equal trust, a teacher's
reliability is how much of the *other* teachers' reliability-weighted vote its answers get,
re-estimated a few times. Agreement only says something on prompts where some teachers agree:
when every teacher answers differently (on ``facts`` only gemma-tiny knows the capitals, the
others answer noise), there is nothing to agree with. The teacher's **confidence** — the mean
probability of its answer tokens — is therefore a prior, worth ``PRIOR_STRENGTH`` prompts of
agreement: with little agreement the confident teacher is trusted, and with much agreement the
agreement decides, so a teacher that is *confidently* wrong on part of a family (qwen-tiny on
km → m) loses to the teachers that agree with each other there. Confidence is only as good as
the teachers' calibration: a tiny model sure of its noise on a family that nobody else
answers either is trusted there (see the report's ``target_accuracy``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from avocado_llm.data.echoes import question_of
from avocado_llm.fusion.records import Candidate, Prompt
from avocado_llm.world.tasks import get_family

ITERATIONS = 5
PRIOR_STRENGTH = 4.0
"""How many prompts of agreement the confidence prior is worth."""
UNKNOWN_CONFIDENCE = 0.5
"""Prior of a teacher that gave no log-probabilities (an endpoint without them)."""


Check = Callable[[str, str, str], object]
"""A verifier: ``check(answer, gold, question)`` is truthy when the answer is right; the
question is the prompt's last user message (:func:`~avocado_llm.data.echoes.question_of`)."""


def verified_reliability(prompts: list[Prompt], check: Check | None = None) -> dict[str, float]:
    """Per teacher: the share of its answers the verifier accepts against gold (``check``, by
    default the tiny-world family's own, which reads no question)."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for prompt in prompts:
        if prompt.gold is None:
            continue
        verify = check or world_check(prompt.family)
        question = question_of(prompt.messages)
        for c in prompt.candidates:
            total[c.teacher] += 1
            right[c.teacher] += bool(verify(c.text, prompt.gold, question))
    return {t: right[t] / total[t] for t in sorted(total)}


def world_check(family: str) -> Check:
    """A tiny-world family's verifier as a :data:`Check` (it reads no question)."""
    verify = get_family(family).verify
    return lambda answer, gold, question: verify(answer, gold)


def confidence_prior(prompts: list[Prompt]) -> dict[str, float]:
    """Per teacher: the mean probability of its answer tokens, exp(mean log-prob), in [0, 1]."""
    values: dict[str, list[float]] = {}
    for prompt in prompts:
        for c in prompt.candidates:
            values.setdefault(c.teacher, [])
            if c.confidence is not None and not math.isnan(c.confidence):
                # A mean log-probability above 0 (a harvest that stored positive values) is no
                # probability: clamped to 1 rather than overflowing.
                values[c.teacher].append(math.exp(min(c.confidence, 0.0)))
    return {t: sum(v) / len(v) if v else UNKNOWN_CONFIDENCE for t, v in sorted(values.items())}


def label_free_reliability(prompts: list[Prompt]) -> dict[str, float]:
    """Per teacher, in [0, 1]: agreement with the others' weighted vote, shrunk to confidence."""
    prior = confidence_prior(prompts)
    reliability = dict.fromkeys(prior, 1.0)
    informative = [p for p in prompts if _has_agreement(p)]
    for _ in range(ITERATIONS):
        agreement: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for prompt in informative:
            for teacher, share in _agreement(prompt, reliability).items():
                agreement[teacher] += share
                seen[teacher] += 1
        reliability = {
            t: (agreement[t] + PRIOR_STRENGTH * prior[t]) / (seen[t] + PRIOR_STRENGTH)
            for t in prior
        }
    return reliability


def weighted_votes(candidates: list[Candidate], reliability: dict[str, float]) -> Counter[str]:
    """Normalised answer → its vote: each teacher casts its reliability, split over its samples."""
    samples = Counter(c.teacher for c in candidates)
    votes: Counter[str] = Counter()
    for c in candidates:
        votes[c.answer] += reliability.get(c.teacher, 0.0) / samples[c.teacher]
    return votes


def _has_agreement(prompt: Prompt) -> bool:
    """Whether two different teachers gave the same answer (a teacher's samples don't count)."""
    return any(len({c.teacher for c in group}) > 1 for group in prompt.by_answer().values())


def _agreement(prompt: Prompt, reliability: dict[str, float]) -> dict[str, float]:
    """Per teacher: the mean share of the other teachers' vote that its answers get."""
    shares = {}
    for teacher in prompt.teachers:
        others = [c for c in prompt.candidates if c.teacher != teacher]
        votes = weighted_votes(others, reliability)
        total = sum(votes.values())
        if total <= 0:
            continue
        own = [c for c in prompt.candidates if c.teacher == teacher]
        shares[teacher] = sum(votes[c.answer] for c in own) / (len(own) * total)
    return shares
