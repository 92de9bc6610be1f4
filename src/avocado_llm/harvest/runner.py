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

What is asked is in :mod:`~avocado_llm.harvest.prompts`, one batch (ask, check, write) in
:mod:`~avocado_llm.harvest.batch`, the record keys in :mod:`~avocado_llm.harvest.keys`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
from avocado_llm.harvest.batch import ask, by_reason, missing_records, write_rows
from avocado_llm.harvest.keys import record_key
from avocado_llm.harvest.prompts import Prompts, key_source, with_sources
from avocado_llm.harvest.prompts import harvest_prompts as harvest_prompts  # re-exported
from avocado_llm.harvest.prompts import source_prompts as source_prompts  # re-exported
from avocado_llm.harvest.store import HarvestError, HarvestStore
from avocado_llm.teachers import SamplingParams, Teacher, load_teacher, sampling_params
from avocado_llm.teachers.base import TeacherInfo
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
        missing = missing_records(batch, keys, done)
        rows, failures = await ask(teacher, batch, missing, keys, params)
        written, refused = write_rows(store, info.name, rows)
        failures += refused
        for reason, items in by_reason(failures).items():
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


def _printable(text: str) -> str:
    """``text`` safe for a terminal: control characters and lone surrogates escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
