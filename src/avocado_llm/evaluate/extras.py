"""Optional inputs of the report, read from a run directory when they are there.

- training losses: ``run_dir/student/*/loss.jsonl``, one ``{"step": int, "loss": float, ...}``
  per line (the curve is named after its directory);
- the harvest: ``run_dir/harvest`` (per teacher: answers and tokens, via
  :func:`avocado_llm.harvest.status`);
- fusion: ``run_dir/fusion/*.report.json``, each ``{"strategy": str, "teachers": {NAME:
  {"kept": int, "total": int}}}`` (or ``{NAME: {"share": float}}``): the share of each teacher's
  answers that the fusion kept.

A missing input means no plot; an input that is there but unreadable is an error that names the
file, never skipped in silence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avocado_llm.evaluate.report import ReportError

EXTRA_KEYS = ("run_dir", "loss_files", "harvest_dir", "fusion_reports", "title")
"""What ``write_report(eval_dir, extra)`` accepts in ``extra``; ``run_dir`` (default: the
parent of ``eval_dir``) is where the other inputs are looked for when not given."""


@dataclass(frozen=True)
class HarvestStats:
    """One teacher's share of the harvest."""

    answers: int
    tokens: int


@dataclass
class Extras:
    title: str = "Evaluation"
    loss_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Curve name → (step, loss) points in step order."""
    harvest: dict[str, HarvestStats] = field(default_factory=dict)
    fusion: dict[str, dict[str, float]] = field(default_factory=dict)
    """Fusion report (its strategy) → teacher → share of the teacher's answers kept."""


def read_loss(path: Path) -> list[tuple[int, float]]:
    """(step, loss) of every line of a training log, sorted by step."""
    points = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                points.append((int(row["step"]), float(row["loss"])))
            except (ValueError, KeyError, TypeError) as e:
                want = '{"step": int, "loss": float}'
                raise ReportError(f"{path}:{number}: expected {want}, got {line.strip()!r}") from e
    return sorted(points)


def read_fusion(path: Path) -> tuple[str, dict[str, float]]:
    """(strategy, teacher → share of the kept examples it won) of one fusion report."""
    from avocado_llm.fusion import read_report

    try:
        report = read_report(path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ReportError(f"{path}: not a fusion report written by `avocado fuse` ({e!r})") from e
    examples = sum(f.examples for f in report.families.values())
    shares = {t: n / max(examples, 1) for t, n in report.wins.items()}
    return report.strategy, shares


def read_harvest(root: Path) -> dict[str, HarvestStats]:
    from avocado_llm.harvest import HarvestError, status

    try:
        teachers = status(root)
    except HarvestError as e:
        raise ReportError(str(e)) from e
    return {name: HarvestStats(t.records, t.completion_tokens) for name, t in teachers.items()}


def _curve_name(path: Path) -> str:
    return path.parent.name if path.name == "loss.jsonl" else path.stem


def gather_extras(eval_dir: Path, extra: dict[str, Any] | None) -> Extras:
    """The optional inputs named in ``extra``, or found in the run directory."""
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise ReportError(f"unknown report input(s) {unknown}; known: {', '.join(EXTRA_KEYS)}")
    run_dir = Path(extra.get("run_dir") or eval_dir.parent)
    out = Extras(title=str(extra.get("title") or "Evaluation"))

    loss_files = extra.get("loss_files")
    if loss_files is None:  # the layout of `avocado run`: student/ and baselines/<strategy>/
        loss_files = [
            *sorted(run_dir.glob("student/loss.jsonl")),
            *sorted((run_dir / "student").glob("*/loss.jsonl")),
            *sorted((run_dir / "baselines").glob("*/loss.jsonl")),
        ]
    for file in map(Path, loss_files):
        if not file.is_file():
            raise ReportError(f"no training log at {file}; fix the path or leave it out")
        if points := read_loss(file):
            out.loss_curves[_curve_name(file)] = points

    harvest_dir = extra.get("harvest_dir")
    if harvest_dir is not None:
        out.harvest = read_harvest(Path(harvest_dir))
    elif (run_dir / "harvest" / "data").is_dir():  # a run that never harvested has no plot
        out.harvest = read_harvest(run_dir / "harvest")

    fusion_files = extra.get("fusion_reports")
    if fusion_files is None:
        fusion_files = sorted((run_dir / "fusion").glob("*.report.json"))
    for file in map(Path, fusion_files):
        label, shares = read_fusion(file)
        out.fusion[label] = shares
    return out
