"""Resuming: a rerun asks the teachers only what is missing, and changes nothing that is done.
A failed batch is logged, the run goes on and exits non-zero; the next run retries just it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pytest

import avocado_llm.teachers as avocado_teachers
from avocado_llm import cli
from avocado_llm.config import Recipe, load_recipe
from avocado_llm.harvest import harvest, read_records, status
from avocado_llm.teachers import Completion, SamplingParams, Teacher, load_teacher
from avocado_llm.teachers.base import Messages


class Recorder:
    """Wraps a real teacher: counts the prompts it is asked, and can fail one call."""

    def __init__(self, inner: Teacher, fail_call: int | None = None) -> None:
        self.inner, self.info, self.fail_call = inner, inner.info, fail_call
        self.asked: list[str] = []
        self.calls = 0

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        self.calls += 1
        if self.calls == self.fail_call:
            raise RuntimeError("the GPU fell off the bus")
        self.asked += [c[-1]["content"] for c in conversations]
        return await self.inner.generate(conversations, params)

    async def aclose(self) -> None:
        await self.inner.aclose()


def teachers(recipe: Recipe, fail: dict[str, int] | None = None) -> list[Recorder]:
    fail = fail or {}
    return [Recorder(load_teacher(t, recipe, "cpu"), fail.get(t.name)) for t in recipe.teachers]


def sorted_records(out: Path) -> pa.Table:
    return read_records(out).sort_by("key")


def test_a_rerun_recomputes_nothing(write_recipe) -> None:
    recipe = load_recipe(write_recipe())
    out = recipe.run_dir / "harvest"
    first = teachers(recipe)
    asyncio.run(harvest(recipe, limit=3, teachers=first, progress=False))
    assert [len(t.asked) for t in first] == [3, 3]

    rest = teachers(recipe)
    summary = asyncio.run(harvest(recipe, teachers=rest, progress=False))
    assert [len(t.asked) for t in rest] == [5, 5]  # the 3 done prompts are not asked again
    assert [(t.skipped, t.written) for t in summary.teachers] == [(3, 5), (3, 5)]
    done = sorted_records(out)
    assert done.num_rows == 16

    again = teachers(recipe)
    summary = asyncio.run(harvest(recipe, teachers=again, progress=True))
    assert [t.calls for t in again] == [0, 0] and summary.written == 0 and summary.ok
    assert sorted_records(out).equals(done)


def test_a_failed_batch_is_logged_and_retried(
    write_recipe, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_recipe(batch_size=3)  # 8 prompts: batches of 3, 3, 2
    recipe = load_recipe(path)
    out = recipe.run_dir / "harvest"

    def flaky_qwen(cfg, recipe, device):  # the second batch asked of qwen-tiny raises
        return Recorder(load_teacher(cfg, recipe, device), 2 if cfg.name == "qwen-tiny" else None)

    # The CLI loads its teachers through teachers.harvest_teachers, which calls load_teacher.
    monkeypatch.setattr(avocado_teachers, "load_teacher", flaky_qwen)
    assert cli.main(["harvest", str(path), "--device", "cpu"]) == 1
    assert "3 records failed" in capsys.readouterr().err
    report = status(out)
    assert (report["qwen-tiny"].records, report["qwen-tiny"].failed) == (5, 3)
    assert (report["gemma-tiny"].records, report["gemma-tiny"].failed) == (8, 0)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 3 and {f["teacher"] for f in failures} == {"qwen-tiny"}
    assert all(f["reason"] == "RuntimeError: the GPU fell off the bus" for f in failures)
    assert all(f["key"] and f["prompt_id"] and f["time"] for f in failures)

    healthy = teachers(recipe)
    summary = asyncio.run(harvest(recipe, teachers=healthy, progress=False))
    failed_prompts = {f["prompt_id"] for f in failures}
    qwen, gemma = healthy
    assert len(qwen.asked) == 3 and gemma.calls == 0
    assert summary.ok and summary.written == 3
    records = read_records(out)
    assert {r["prompt_id"] for r in records.to_pylist() if r["teacher"] == "qwen-tiny"} >= (
        failed_prompts
    )
    assert records.num_rows == 16 and len(set(records["key"].to_pylist())) == 16
    assert all(t.failed == 0 for t in status(out).values())
