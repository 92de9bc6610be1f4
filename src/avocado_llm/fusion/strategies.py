"""The fusion strategies: for every prompt of one family, which answer to learn and from whom.

Each strategy takes a family's prompts and returns its examples and the teacher reliabilities
it used. Only ``verify`` reads gold, and only where ``records.group_prompts`` left it (not on
unverified families, where it falls back to ``vote``). A prompt source of ``data.sources`` is a
family here: ``verify`` checks its answers with the source's verifier against its reference,
and falls back to ``vote`` on a source without a verifier (``verifier: none``).

- ``verify``: answers the verifier accepts; the target is the correct answer of the teacher
  most often right on the family; every teacher that wrote exactly that text shares the weight.
  With ``fusion.use_reference``, a prompt no teacher got right teaches its reference answer
  (strategy ``reference``: no teacher weights, cross-entropy only).
- ``vote``: the weighted majority of normalised answers, with label-free reliabilities as
  weights (:mod:`avocado_llm.fusion.reliability`); ties go to the more reliable teacher, then
  the more confident answer.
- ``min_ce``: FuseLLM-style: the answer the *other* teachers find most likely (lowest
  cross-entropy, per character of the answer, averaged over the scorers that did not give it;
  :func:`~avocado_llm.fusion.scoring.cross_entropy` says why per character).
- ``judge``: one teacher's likelihood of each answer; the highest wins. A tiny teacher is a poor
  judge outside its own families: its likelihoods there are noise.
- ``all``: every answer, one example each; ``single:<teacher>``: one teacher's answers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from avocado_llm.data.echoes import question_of
from avocado_llm.fusion.example import FusedExample, FusionError
from avocado_llm.fusion.records import Candidate, Prompt
from avocado_llm.fusion.reliability import (
    Check,
    label_free_reliability,
    verified_reliability,
    weighted_votes,
    world_check,
)
from avocado_llm.fusion.scoring import (
    Scorer,
    confidence,
    cross_entropy,
    representative,
    score_answers,
    shares,
)

Reliability = dict[str, float]


@dataclass
class Context:
    unverified: set[str]
    scorers: dict[str, Scorer] = field(default_factory=dict)
    judge: str | None = None
    verifiers: dict[str, Check] = field(default_factory=dict)
    """Prompt source (``data.sources``) name → its verifier; a source without one is fused
    label-free, its reference never read (``records.group_prompts`` blanks it)."""
    use_reference: bool = False
    """``verify``: a graded prompt no teacher answered right teaches its reference (no KD)."""


Strategy = Callable[[list[Prompt], Context], tuple[list[FusedExample], Reliability]]


def example(
    prompt: Prompt,
    target: Candidate,
    strategy: str,
    support: float = 1.0,
    weight_of: Callable[[str], float] | None = None,
) -> FusedExample:
    """``target`` as an example; weight on the teachers that wrote exactly its text (equal
    shares, or in proportion to ``weight_of``), each through its most confident such record."""
    exact: dict[str, Candidate] = {}
    for c in prompt.candidates:
        if c.text == target.text and (
            c.teacher not in exact or confidence(c) > confidence(exact[c.teacher])
        ):
            exact[c.teacher] = c
    raw = {t: max(weight_of(t), 0.0) if weight_of else 1.0 for t in exact}
    total = sum(raw.values())
    weights = {t: w / total if total > 0 else 1 / len(raw) for t, w in raw.items()}
    keys = {t: c.key for t, c in exact.items()}
    return FusedExample(
        prompt.prompt_id, prompt.family, prompt.messages, target.text, weights, keys, strategy,
        support,
    )  # fmt: skip


def vote(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
    reliability = label_free_reliability(prompts)
    return [ex for p in prompts if (ex := vote_prompt(p, reliability))], reliability


def vote_prompt(prompt: Prompt, reliability: Reliability) -> FusedExample | None:
    """The weighted majority answer of one prompt (``None`` when it has no answer)."""
    groups = prompt.by_answer()
    if not groups:
        return None
    votes = weighted_votes(prompt.candidates, reliability)

    def rank(answer: str) -> tuple[float, float, float]:
        group = groups[answer]
        return (
            round(votes[answer], 9),  # equal votes are a tie, whatever the rounding error
            max(reliability[c.teacher] for c in group),
            max(confidence(c) for c in group),
        )

    answer = max(groups, key=rank)
    target = max(groups[answer], key=lambda c: (reliability[c.teacher], confidence(c)))
    total = sum(votes.values())
    support = votes[answer] / total if total > 0 else 1 / len(groups)
    return example(prompt, target, "vote", support, reliability.__getitem__)


def verify(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
    graded = [p for p in prompts if p.gold is not None]
    fallback, reliability = vote([p for p in prompts if p.gold is None], ctx)
    if not graded:
        return fallback, reliability  # an unverified family: gold was never loaded
    check = ctx.verifiers.get(graded[0].family) or world_check(graded[0].family)
    reliability = verified_reliability(graded, check)
    examples = []
    for prompt in graded:
        question = question_of(prompt.messages)  # "Paris is the capital of France."
        correct = [c for c in prompt.candidates if check(c.text, str(prompt.gold), question)]
        if correct:
            target = max(correct, key=lambda c: (reliability[c.teacher], confidence(c)))
            examples.append(example(prompt, target, "verify"))
        elif ctx.use_reference and str(prompt.gold).strip():
            examples.append(
                FusedExample(prompt.prompt_id, prompt.family, prompt.messages, str(prompt.gold),
                             {}, {}, "reference")
            )  # fmt: skip
    return examples + fallback, reliability


def min_ce(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
    if not ctx.scorers:
        raise FusionError("min_ce needs scorers: pass teachers that can score answers (scorers=)")
    groups = [p.by_answer() for p in prompts]
    answers = [{a: representative(g) for a, g in grp.items()} for grp in groups]
    ce = {}  # scorer → per prompt: answer → its cross-entropy per character
    for name, scorer in ctx.scorers.items():
        scored = score_answers(name, scorer, prompts, answers)
        ce[name] = [
            {a: cross_entropy(lp, reps[a].surface) for a, lp in d.items()}
            for d, reps in zip(scored, answers, strict=True)
        ]
    examples = []
    for i, prompt in enumerate(prompts):
        score = {}
        for answer, group in groups[i].items():
            authors = {c.teacher for c in group}
            judges = [s for s in ce if s not in authors] or list(ce)
            score[answer] = sum(ce[s][i][answer] for s in judges) / len(judges)
        if score:
            best = min(score, key=lambda a: (score[a], -confidence(answers[i][a])))
            support = shares({a: -s for a, s in score.items()})[best]
            examples.append(example(prompt, answers[i][best], "min_ce", support))
    return examples, {}


def judge(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
    if ctx.judge is None:
        raise FusionError("the judge strategy needs a judge: set fusion.judge_teacher")
    if ctx.judge not in ctx.scorers:
        raise FusionError(
            f"judge {ctx.judge!r} is not among the scorers ({', '.join(ctx.scorers) or 'none'}); "
            "pass it in scorers= (a local teacher)"
        )
    answers = [{a: representative(g) for a, g in p.by_answer().items()} for p in prompts]
    scored = score_answers(ctx.judge, ctx.scorers[ctx.judge], prompts, answers)
    examples = []
    for prompt, reps, logprobs in zip(prompts, answers, scored, strict=True):
        likelihood = {a: sum(lp) if lp else -math.inf for a, lp in logprobs.items()}
        if likelihood:
            best = max(likelihood, key=lambda a: (likelihood[a], confidence(reps[a])))
            examples.append(example(prompt, reps[best], "judge", shares(likelihood)[best]))
    return examples, {}


def _each(candidates: Iterable[tuple[Prompt, Candidate]], strategy: str) -> list[FusedExample]:
    return [
        FusedExample(p.prompt_id, p.family, p.messages, c.text, {c.teacher: 1.0},
                     {c.teacher: c.key}, strategy)
        for p, c in candidates
    ]  # fmt: skip


def all_answers(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
    return _each(((p, c) for p in prompts for c in p.candidates), "all"), {}


def single(teacher: str) -> Strategy:
    def run(prompts: list[Prompt], ctx: Context) -> tuple[list[FusedExample], Reliability]:
        chosen = ((p, c) for p in prompts for c in p.candidates if c.teacher == teacher)
        return _each(chosen, f"single:{teacher}"), {}

    return run


STRATEGIES: dict[str, Strategy] = {
    "verify": verify,
    "vote": vote,
    "min_ce": min_ce,
    "judge": judge,
    "all": all_answers,
}


def get_strategy(name: str, teachers: Iterable[str]) -> Strategy:
    """The strategy called ``name`` (``single:<teacher>`` for one of ``teachers``)."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    known = sorted(teachers)
    if name.startswith("single:"):
        teacher = name.removeprefix("single:")
        if teacher not in known:
            raise FusionError(
                f"{name!r}: no answers of {teacher!r} in the harvest; teachers: {', '.join(known)}"
            )
        return single(teacher)
    raise FusionError(
        f"unknown fusion strategy {name!r}; use one of {', '.join(STRATEGIES)}, "
        f"or single:<teacher> with one of {', '.join(known)}"
    )


def scorers_needed(strategy: str, teachers: list[str], judge: str | None) -> list[str]:
    """The teachers a strategy reads as scorers (none for the label-free or verified ones)."""
    if strategy == "min_ce":
        return list(teachers)
    if strategy == "judge":
        return [judge] if judge is not None else []
    return []
