"""One batch of a harvest: ask the teacher, check its answers, make and write the records.

A batch that raises fails whole; a teacher that answers part of it
(:class:`~avocado_llm.teachers.base.PartialAnswers`) fails the rest only; a record the store
refuses (one the parser let through and the schema does not take) fails alone, the batch's
other records are written. Every failure reason is redacted before it is kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from avocado_llm.harvest.keys import record_row
from avocado_llm.harvest.store import HarvestError, HarvestStore
from avocado_llm.teachers import Completion, SamplingParams, Teacher, TeacherError
from avocado_llm.teachers.base import PartialAnswers
from avocado_llm.teachers.redact import redact
from avocado_llm.world.tasks import Example

Failure = tuple[str, str, int, str]
"""A failed record: key, prompt id, sample index, reason (redacted)."""


def missing_records(
    batch: list[Example], keys: dict[str, list[str]], done: set[str]
) -> list[tuple[Example, int]]:
    """``(prompt, sample index)`` of the batch's records not yet in ``done``."""
    return [(ex, i) for ex in batch for i, key in enumerate(keys[ex.id]) if key not in done]


def reason_of(error: BaseException) -> str:
    """What failures.jsonl and the terminal say: redacted (whatever raised it), then cut."""
    return redact(f"{type(error).__name__}: {error}")[:1000]


async def ask(
    teacher: Teacher,
    batch: list[Example],
    missing: list[tuple[Example, int]],
    keys: dict[str, list[str]],
    params: SamplingParams,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """The rows of the batch's answered records, and its failed ones. A batch that raises fails
    whole; a teacher that answers part of it (:class:`PartialAnswers`) fails the rest only."""
    try:
        answers: list[list[Completion] | None] = list(
            await teacher.generate([ex.messages for ex in batch], params)
        )
        errors: list[str | None] = [None] * len(answers)
    except PartialAnswers as partial:
        answers, errors = list(partial.answers), list(partial.errors)
    except Exception as error:  # logged per record and retried by the next run
        reason = reason_of(error)
        return [], [(keys[ex.id][i], ex.id, i, reason) for ex, i in missing]
    position = {ex.id: p for p, ex in enumerate(batch)}
    try:
        check_counts(teacher, batch, answers, params)
        answered = [(ex, i) for ex, i in missing if answers[position[ex.id]] is not None]
        rows = answer_rows(batch, answers, keys, answered, teacher, params)  # type: ignore[arg-type]
    except Exception as error:
        reason = reason_of(error)
        return [], [(keys[ex.id][i], ex.id, i, reason) for ex, i in missing]
    failed = [
        (keys[ex.id][i], ex.id, i, redact(errors[position[ex.id]] or "")[:1000])
        for ex, i in missing
        if answers[position[ex.id]] is None
    ]
    return rows, failed


UNWRITABLE = (HarvestError, ValueError, TypeError, ArithmeticError, pa.ArrowException)
"""What a record that breaks the store's schema raises (an OSError, a full disk, stops the run)."""


def write_rows(
    store: HarvestStore, teacher: str, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Write ``rows``; should the batch not go in whole (a record the parser let through and the
    schema refuses), write them one by one, so that only the records that cannot be written
    fail. Earlier records are untouched: a shard is written whole or not at all."""
    if not rows:
        return [], []
    try:
        store.write(teacher, rows)
        return rows, []
    except UNWRITABLE:
        pass
    written, failed = [], []
    for row in rows:
        try:
            store.write(teacher, [row])
        except UNWRITABLE as error:
            reason = reason_of(error)
            failed.append((row["key"], row["prompt_id"], row["sample_index"], reason))
        else:
            written.append(row)
    return written, failed


def by_reason(failures: list[Failure]) -> dict[str, list[tuple[str, str, int]]]:
    grouped: dict[str, list[tuple[str, str, int]]] = {}
    for key, prompt_id, index, reason in failures:
        grouped.setdefault(reason, []).append((key, prompt_id, index))
    return grouped


def check_counts(
    teacher: Teacher,
    batch: list[Example],
    answers: list[list[Completion] | None],
    params: SamplingParams,
) -> None:
    """Checks that the teacher answered every prompt (``None``: an answer that failed)."""
    counts = [None if a is None else len(a) for a in answers]
    if len(answers) != len(batch) or any(c is not None and c != params.n for c in counts):
        raise TeacherError(
            teacher.info.name,
            f"returned {counts} answers for {len(batch)} prompts; expected {params.n} for each",
        )


def answer_rows(
    batch: list[Example],
    answers: list[list[Completion]],
    keys: dict[str, list[str]],
    missing: list[tuple[Example, int]],
    teacher: Teacher,
    params: SamplingParams,
) -> list[dict[str, Any]]:
    """The rows of the records still missing (whose answers are there)."""
    position = {ex.id: p for p, ex in enumerate(batch)}
    now = datetime.now(UTC)
    return [
        record_row(keys[ex.id][i], ex, teacher.info, params, i, answers[position[ex.id]][i], now)
        for ex, i in missing
    ]
