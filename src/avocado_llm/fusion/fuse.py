"""``fuse``: harvest records in, training examples and a report out.

Decisions are made family by family from :func:`avocado_llm.fusion.records.group_prompts`, which
never hands over gold of an unverified family. Only once every decision is made does the report
read gold — all of it, for evaluation (``target_accuracy``): what a strategy would have scored,
never what it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from avocado_llm.data.echoes import question_of
from avocado_llm.data.verifiers import Verifier, verifier
from avocado_llm.fusion.example import FamilyReport, FusedExample, FusionError, FusionReport
from avocado_llm.fusion.records import Prompt, group_prompts
from avocado_llm.fusion.scoring import Scorer
from avocado_llm.fusion.strategies import Context, get_strategy
from avocado_llm.world.tasks import FAMILIES, get_family


def fuse(
    records: pa.Table,
    strategy: str,
    *,
    unverified: Iterable[str],
    scorers: dict[str, Scorer] | None = None,
    judge: str | None = None,
    min_weight: float = 0.0,
    sources: Mapping[str, str] | None = None,
    use_reference: bool = False,
) -> tuple[list[FusedExample], FusionReport]:
    """Choose, for every prompt of a harvest, the answers to learn and whose distributions.

    ``unverified`` families are fused without gold (``verify`` falls back to ``vote`` there).
    ``scorers`` (teacher name → :class:`~avocado_llm.fusion.scoring.Scorer`) are read by
    ``min_ce`` (all of them) and ``judge`` (the one named ``judge``). Examples whose support
    (:attr:`FusedExample.support`) is below ``min_weight`` are dropped. ``sources`` (prompt
    source name → verifier spec, ``data.sources``) are families too: ``verify`` uses the
    source's verifier, and fuses a source without one (``none``) label-free, as it does any
    family of the records that is neither a tiny-world family nor a source. ``use_reference``:
    ``verify`` turns a graded prompt that no teacher answered right into an example of its
    reference (no teacher weights).
    """
    if not 0.0 <= min_weight <= 1.0:
        raise FusionError(f"min_weight must be in [0, 1], got {min_weight}")
    unverified = set(unverified)
    unknown = sorted(unverified - set(FAMILIES))
    if unknown:
        raise FusionError(
            f"unverified names unknown families {unknown}; families: {', '.join(FAMILIES)}"
        )
    run = get_strategy(strategy, set(records["teacher"].to_pylist()))
    verifiers = source_verifiers(sources or {})
    blind = set(unverified)
    if sources:  # gold is read only where a verifier reads it
        blind |= {name for name in sources if name not in verifiers}
        known = set(FAMILIES) | set(verifiers)
        blind |= {f for f in set(records["family"].to_pylist()) if f not in known}
    context = Context(unverified, dict(scorers or {}), judge, verifiers, use_reference)
    by_family: dict[str, list[Prompt]] = {}
    for prompt in group_prompts(records, blind):
        by_family.setdefault(prompt.family, []).append(prompt)
    examples: list[FusedExample] = []
    report = FusionReport(strategy)
    for family, prompts in by_family.items():
        chosen, reliability = run(prompts, context)
        chosen = [e for e in chosen if e.support >= min_weight]
        examples += chosen
        report.families[family] = _family_report(prompts, chosen, reliability)
    _evaluate(report, examples, records, verifiers)
    return examples, report


def source_verifiers(sources: Mapping[str, str]) -> dict[str, Verifier]:
    """Source name → its verifier, for the sources that have one."""
    verifiers = {}
    for name, spec in sources.items():
        try:
            check = verifier(spec)
        except ValueError as error:
            raise FusionError(f"source {name!r}: {error}") from None
        if check is not None:
            verifiers[name] = check
    return verifiers


def _family_report(
    prompts: list[Prompt], examples: list[FusedExample], reliability: dict[str, float]
) -> FamilyReport:
    wins: dict[str, int] = dict.fromkeys(sorted({t for p in prompts for t in p.teachers}), 0)
    for ex in examples:
        for teacher in ex.weights:
            wins[teacher] = wins.get(teacher, 0) + 1
    return FamilyReport(
        total=len(prompts),
        kept=len({ex.prompt_id for ex in examples}),
        examples=len(examples),
        wins=wins,
        references=sum(1 for ex in examples if ex.strategy == "reference"),
        reliability={t: round(r, 4) for t, r in sorted(reliability.items())},
    )


def _evaluate(
    report: FusionReport,
    examples: list[FusedExample],
    records: pa.Table,
    verifiers: Mapping[str, Verifier] | None = None,
) -> None:
    """EVALUATION ONLY: each family's (and verified source's) share of targets the verifier
    accepts against gold."""
    verifiers = verifiers or {}
    gold = dict(zip(records["prompt_id"].to_pylist(), records["gold"].to_pylist(), strict=True))
    right: dict[str, list[bool]] = {}
    for ex in examples:
        if gold.get(ex.prompt_id) is None:
            continue
        if ex.family in verifiers:
            question = question_of(ex.messages)
            verdict = bool(verifiers[ex.family](ex.target, gold[ex.prompt_id], question))
            right.setdefault(ex.family, []).append(verdict)
        elif ex.family in FAMILIES:
            verdict = get_family(ex.family).verify(ex.target, gold[ex.prompt_id])
            right.setdefault(ex.family, []).append(verdict)
    for family, summary in report.families.items():
        verdicts = right.get(family)
        summary.target_accuracy = round(sum(verdicts) / len(verdicts), 4) if verdicts else None
