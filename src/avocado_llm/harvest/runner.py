"""Ask every teacher every prompt; keep what they answer, batch by batch, resumably.

Each teacher runs as its own asyncio task (local teachers generate in a worker thread), so the
teachers work side by side. A teacher's prompts go in batches of ``harvest.batch_size``; each
batch is one ``teacher.generate`` call and is flushed to a shard as soon as it is answered, so
an interruption (Ctrl-C, kill -9, a crash) loses at most the batches in flight. A batch that
raises is logged as failed, record by record, and the run goes on; the next run retries it,
because only written records count as done. A teacher that answers part of a batch
(:class:`~avocado_llm.teachers.base.PartialAnswers`: one malformed answer among good ones) has
its good answers written and only the bad ones logged; a record the store still cannot write
fails alone too. Every failure reason is redacted before it is written or printed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from avocado_llm.config import Recipe, RecipeError
from avocado_llm.harvest.keys import record_key, record_row
from avocado_llm.harvest.prompts import Prompts, key_source, with_sources
from avocado_llm.harvest.prompts import harvest_prompts as harvest_prompts  # re-exported
from avocado_llm.harvest.prompts import source_prompts as source_prompts  # re-exported
from avocado_llm.harvest.store import HarvestError, HarvestStore
from avocado_llm.teachers import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    load_teacher,
    sampling_params,
)
from avocado_llm.teachers.base import PartialAnswers, TeacherInfo
from avocado_llm.teachers.redact import redact
from avocado_llm.world.checks import check_families
from avocado_llm.world.tasks import Example


@dataclass
class TeacherReport:
    """What one run did for one teacher."""

    name: str
    planned: int
    """Records this run covers: prompts × samples per prompt."""
    skipped: int = 0
    """Already in the store before this run."""
    written: int = 0
    failed: int = 0
    """Records whose batch raised; logged in failures.jsonl and retried by the next run."""
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class HarvestSummary:
    out_dir: Path
    teachers: list[TeacherReport]

    @property
    def written(self) -> int:
        return sum(t.written for t in self.teachers)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.teachers)

    @property
    def ok(self) -> bool:
        return self.failed == 0


async def harvest(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    teachers: list[Teacher] | None = None,
    progress: bool = True,
    device: str = "auto",
) -> HarvestSummary:
    """Harvest ``recipe``'s teachers (or the given ones) into ``out_dir``
    (default ``run_dir/harvest``), skipping every record already there. The prompts are the
    tiny world's families, then the training prompts of every ``data.sources`` entry (streamed;
    ``limit`` takes the first ``limit`` of them all). A source whose content changed since it
    was harvested into ``out_dir`` is refused (its hash is in the manifest)."""
    if limit is not None and limit < 1:
        raise HarvestError(f"limit must be at least 1, got {limit}")
    if out_dir is None and recipe.harvest.from_run is not None:
        raise HarvestError(
            f"recipe {recipe.name!r} reuses the harvest of run {recipe.harvest.from_run!r} "
            "(harvest.from_run): harvest with that run's recipe, or remove from_run"
        )
    try:
        check_families(recipe, reads_sources=True)
    except RecipeError as error:
        raise HarvestError(str(error)) from None
    out = Path(out_dir) if out_dir is not None else recipe.harvest_dir
    prompts: list[Example] | Prompts = harvest_prompts(recipe, limit)
    digests: dict[str, str] = {}
    if recipe.data.sources:  # your own data: streamed, after the tiny world's prompts
        prompts, digests = with_sources(recipe, prompts, limit)
    params = sampling_params(recipe.harvest, recipe.seed)
    store = HarvestStore(out, recipe.name, recipe.harvest.shard_size)
    owned = teachers is None
    try:
        if digests:
            store.register_sources(digests)
        if teachers is None:
            teachers = await asyncio.to_thread(
                lambda: [load_teacher(cfg, recipe, device) for cfg in recipe.teachers]
            )
        for teacher in teachers:
            store.register_teacher(teacher.info, params)
        with _progress_bars(progress) as bars:
            jobs = [
                asyncio.ensure_future(
                    _harvest_teacher(
                        teacher, prompts, params, store, recipe.harvest.batch_size, bars
                    )
                )
                for teacher in teachers
            ]
            try:
                reports = await asyncio.gather(*jobs)
            except BaseException:  # one teacher broke, or Ctrl-C: stop the others too
                for job in jobs:
                    job.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
                raise
        return HarvestSummary(out, list(reports))
    finally:
        store.close()
        if owned and teachers is not None:
            for teacher in teachers:
                await teacher.aclose()


def _progress_bars(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:>8.1f} tok/s"),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


async def _harvest_teacher(
    teacher: Teacher,
    prompts: list[Example] | Prompts,
    params: SamplingParams,
    store: HarvestStore,
    batch_size: int,
    bars: Progress,
) -> TeacherReport:
    """Ask ``teacher`` every prompt it has not answered yet, ``batch_size`` prompts a batch.
    The prompts are read once, in order; only a batch's keys are held at a time."""
    info = teacher.info
    done = store.finished(info.name)
    total = len(prompts)
    report = TeacherReport(info.name, planned=total * params.n)
    bar = bars.add_task(info.name, total=total, completed=0, tps=0.0, failed=0)
    start = time.perf_counter()
    for batch, keys, skipped in _todo(prompts, info, params, done, batch_size):
        report.skipped += skipped * params.n
        bars.update(bar, advance=skipped)
        if not batch:
            continue
        report.skipped += sum(key in done for ex in batch for key in keys[ex.id])
        missing = _missing(batch, keys, done)
        rows, failures = await _ask(teacher, batch, missing, keys, params)
        written, refused = _write(store, info.name, rows)
        failures += refused
        for reason, items in _by_reason(failures).items():
            store.record_failures(info.name, items, reason)
            bars.console.print(
                f"[red]{escape(info.name)}: {len(items)} record(s) failed[/] "
                f"({escape(_printable(reason))})"
            )
        report.written += len(written)
        report.failed += len(failures)
        report.completion_tokens += sum(row["completion_tokens"] for row in written)
        report.seconds = time.perf_counter() - start
        tps = report.completion_tokens / max(report.seconds, 1e-9)
        bars.update(bar, advance=len(batch), tps=tps, failed=report.failed)
    return report


def _todo(
    prompts: Iterable[Example],
    info: TeacherInfo,
    params: SamplingParams,
    done: set[str],
    batch_size: int,
) -> Iterator[tuple[list[Example], dict[str, list[str]], int]]:
    """``(batch, its keys, prompts skipped before it)``: the prompts with a record still
    missing, in order, ``batch_size`` at a time (the last batch may be empty, to report the
    prompts skipped after the last full one). Prompts whose records are all done are skipped."""
    batch: list[Example] = []
    keys: dict[str, list[str]] = {}
    skipped = 0
    for ex in prompts:
        source = key_source(ex)
        ex_keys = [record_key(info, ex.messages, params, i, source) for i in range(params.n)]
        if all(key in done for key in ex_keys):
            skipped += 1
            continue
        batch.append(ex)
        keys[ex.id] = ex_keys
        if len(batch) == batch_size:
            yield batch, keys, skipped
            batch, keys, skipped = [], {}, 0
    if batch or skipped:
        yield batch, keys, skipped


Failure = tuple[str, str, int, str]
"""A failed record: key, prompt id, sample index, reason (redacted)."""


def _missing(
    batch: list[Example], keys: dict[str, list[str]], done: set[str]
) -> list[tuple[Example, int]]:
    return [(ex, i) for ex in batch for i, key in enumerate(keys[ex.id]) if key not in done]


def _reason(error: BaseException) -> str:
    """What failures.jsonl and the terminal say: redacted (whatever raised it), then cut."""
    return redact(f"{type(error).__name__}: {error}")[:1000]


async def _ask(
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
        reason = _reason(error)
        return [], [(keys[ex.id][i], ex.id, i, reason) for ex, i in missing]
    position = {ex.id: p for p, ex in enumerate(batch)}
    try:
        _check_counts(teacher, batch, answers, params)
        answered = [(ex, i) for ex, i in missing if answers[position[ex.id]] is not None]
        rows = _rows(batch, answers, keys, answered, teacher, params)  # type: ignore[arg-type]
    except Exception as error:
        reason = _reason(error)
        return [], [(keys[ex.id][i], ex.id, i, reason) for ex, i in missing]
    failed = [
        (keys[ex.id][i], ex.id, i, redact(errors[position[ex.id]] or "")[:1000])
        for ex, i in missing
        if answers[position[ex.id]] is None
    ]
    return rows, failed


UNWRITABLE = (HarvestError, ValueError, TypeError, ArithmeticError, pa.ArrowException)
"""What a record that breaks the store's schema raises (an OSError, a full disk, stops the run)."""


def _write(
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
            reason = _reason(error)
            failed.append((row["key"], row["prompt_id"], row["sample_index"], reason))
        else:
            written.append(row)
    return written, failed


def _by_reason(failures: list[Failure]) -> dict[str, list[tuple[str, str, int]]]:
    grouped: dict[str, list[tuple[str, str, int]]] = {}
    for key, prompt_id, index, reason in failures:
        grouped.setdefault(reason, []).append((key, prompt_id, index))
    return grouped


def _printable(text: str) -> str:
    """``text`` safe for a terminal: control characters and lone surrogates escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)


def _check_counts(
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


def _rows(
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
