"""``report.json`` on disk: read and checked (:func:`load_report`), and merged into under a file
lock, written atomically, so two ``avocado eval`` runs into one directory keep each other's
entries: a model's entry (:func:`update_report`), its lm-eval scores (:func:`update_lm_eval`),
judged counts (:func:`update_judged`). Also each model's answers file (:func:`write_answers`)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avocado_llm.evaluate.report_schema import (
    REPORT_FILE,
    ReportError,
    check_report,
    judged_problems,
    lm_eval_problems,
)


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one (rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(eval_dir: Path) -> Iterator[None]:
    """Two `avocado eval` runs into one directory must not lose each other's entries."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(eval_dir / ".report.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "r+") as lock:  # O_NOFOLLOW: never open a planted link's target
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_report(eval_dir: str | Path) -> dict[str, Any]:
    """The report in ``eval_dir``, checked against the schema."""
    path = Path(eval_dir) / REPORT_FILE
    if not path.is_file():
        raise ReportError(f"no {REPORT_FILE} in {eval_dir}; run `avocado eval RECIPE` first")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ReportError(f"{path} is not JSON ({e}); delete it and evaluate again") from e
    problems = check_report(report)
    if problems:
        raise ReportError(f"{path} breaks the report schema:\n  " + "\n  ".join(problems))
    return report


def update_report(
    eval_dir: str | Path, name: str, entry: dict[str, Any], recipe: str | None = None
) -> dict[str, Any]:
    """Add or replace model ``name``'s entry in ``eval_dir/report.json``; returns the report."""
    eval_dir = Path(eval_dir)
    problems = check_report({"models": {name: entry}})
    if problems:
        raise ReportError("refusing to write an invalid entry:\n  " + "\n  ".join(problems))
    with _locked(eval_dir):
        exists = (eval_dir / REPORT_FILE).is_file()
        report = load_report(eval_dir) if exists else {"models": {}}
        if recipe is not None:
            report["recipe"] = recipe
        report["models"][name] = entry
        report["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_text_atomic(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def drop_models(eval_dir: str | Path, names: list[str]) -> None:
    """Remove the entries of ``names`` (and judged pairs against them) from the report."""
    eval_dir = Path(eval_dir)
    with _locked(eval_dir):
        report = load_report(eval_dir)
        for name in names:
            report["models"].pop(name, None)
            for rivals in report.get("judged", {}).values():
                rivals.pop(name, None)
        write_text_atomic(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")


def update_lm_eval(
    eval_dir: str | Path, name: str, entry: dict[str, Any], recipe: str | None = None
) -> dict[str, Any]:
    """Merge lm-eval's scores of model ``name`` into ``eval_dir/report.json`` (``lm_eval``):
    its tasks run now replace the same tasks' earlier scores, the others are kept."""
    eval_dir = Path(eval_dir)
    problems = lm_eval_problems({name: entry})
    if problems:
        raise ReportError("refusing to write invalid lm-eval scores:\n  " + "\n  ".join(problems))
    eval_dir.mkdir(parents=True, exist_ok=True)
    with _locked(eval_dir):
        exists = (eval_dir / REPORT_FILE).is_file()
        report = load_report(eval_dir) if exists else {"models": {}}
        if recipe is not None:
            report.setdefault("recipe", recipe)
        old = report.setdefault("lm_eval", {}).get(name, {})
        report["lm_eval"][name] = {**old, **entry, "tasks": {**old.get("tasks", {}),
                                                             **entry["tasks"]}}  # fmt: skip
        report["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_text_atomic(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def update_judged(
    eval_dir: str | Path,
    judged: dict[str, dict[str, dict[str, Any]]],
    checks: dict[str, dict[str, dict[str, int]]] | None = None,
) -> None:
    """Add or replace the judged counts of each (source, model) of ``judged`` in
    ``eval_dir/report.json`` (the other pairs are kept). ``checks`` (verified sources: how often
    the judge sided with the verifier, per teacher: ``{"agree", "n"}``) are kept under
    ``judge_checks`` and summed into ``judge_agreement``: ``{SOURCE: fraction}``."""
    problems = judged_problems(judged)
    if problems:
        raise ReportError("refusing to write invalid judged counts:\n  " + "\n  ".join(problems))
    eval_dir = Path(eval_dir)
    with _locked(eval_dir):
        report = load_report(eval_dir)
        for source, rivals in judged.items():
            report.setdefault("judged", {}).setdefault(source, {}).update(rivals)
        for source, rivals in (checks or {}).items():
            report.setdefault("judge_checks", {}).setdefault(source, {}).update(rivals)
        for source, rivals in report.get("judge_checks", {}).items():
            n = sum(c["n"] for c in rivals.values())
            if n:
                agree = sum(c["agree"] for c in rivals.values()) / n
                report.setdefault("judge_agreement", {})[source] = agree
        write_text_atomic(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")


def write_answers(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line: what the model answered to each example, and whether right."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
