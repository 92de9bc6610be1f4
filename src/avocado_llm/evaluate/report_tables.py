"""What every rendering of a report shares: the accuracy table (models against families, best
per column), the students' verdicts against the teachers, and the judged and lm-eval rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avocado_llm.evaluate.report_schema import ROLES


@dataclass
class Table:
    """Models (rows, teachers first) against families (columns), with the best per column."""

    families: list[str]
    names: list[str]
    models: dict[str, dict[str, Any]]
    best: dict[str, float] = field(default_factory=dict)
    """Column (a family or ``overall``) → its highest accuracy."""

    def accuracy(self, name: str, column: str) -> float | None:
        m = self.models[name]
        if column == "overall":
            return m["overall"]
        stats = m["families"].get(column)
        return stats["accuracy"] if stats else None

    def is_best(self, name: str, column: str) -> bool:
        return self.accuracy(name, column) == self.best.get(column)


def summary_table(report: dict[str, Any]) -> Table:
    models = report["models"]
    names = sorted(models, key=lambda n: (ROLES.index(models[n]["role"]), n))
    families = list(dict.fromkeys(f for n in names for f in models[n]["families"]))
    table = Table(families, names, models)
    for column in [*families, "overall"]:
        values = [v for n in names if (v := table.accuracy(n, column)) is not None]
        if values:
            table.best[column] = max(values)
    return table


FAMILY_MARGIN = 0.03
"""The quality bar: on every family, at least the best teacher's accuracy minus this."""


def verdicts(report: dict[str, Any]) -> list[str]:
    """Per student: does it beat every teacher overall, and is it within FAMILY_MARGIN of the best
    teacher on every family (the families it falls short on are named)?"""
    models = report["models"]
    teachers = [n for n in models if models[n]["role"] == "teacher"]
    if not teachers:
        return []
    top = max(teachers, key=lambda n: models[n]["overall"])
    lines = []
    for s in sorted(n for n in models if models[n]["role"] == "student"):
        beats = all(models[s]["overall"] > models[t]["overall"] for t in teachers)
        lines.append(
            f"student beats every teacher: {'yes' if beats else 'no'} ({s} "
            f"{models[s]['overall']:.1%} overall; best teacher {top} {models[top]['overall']:.1%})"
        )
        short = []
        for family, score in models[s]["families"].items():
            rivals = [models[t]["families"][family]["accuracy"] for t in teachers
                      if family in models[t]["families"]]  # fmt: skip
            if rivals and score["accuracy"] < max(rivals) - FAMILY_MARGIN - 1e-9:
                short.append(f"{family} {score['accuracy']:.1%} < {max(rivals):.1%} − 3")
        detail = "; ".join(short) if short else f"{len(models[s]['families'])} families"
        lines.append(
            f"within 3 points of the best teacher on every family: {'no' if short else 'yes'} "
            f"({s}: {detail})"
        )
    return lines


def judged_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged counts as table rows: source, teacher, student, win / tie / loss rates."""
    rows = []
    for source, rivals in sorted(report.get("judged", {}).items()):
        for model, c in sorted(rivals.items()):
            n = c["n"] or 1
            rates = {k: f"{c[k] / n:.0%} ({c[k]})" for k in ("win", "tie", "loss")}
            rows.append(dict(source=source, model=model, student=c.get("student", "student"),
                             n=c["n"], judge=c.get("judge", "—"), **rates))  # fmt: skip
    return rows


def agreement_lines(report: dict[str, Any]) -> list[str]:
    """One line per verified source the judge was checked on: how often it sided with the
    verifier where exactly one of the two answers was right."""
    lines = []
    for source, fraction in sorted(report.get("judge_agreement", {}).items()):
        n = sum(c["n"] for c in report.get("judge_checks", {}).get(source, {}).values())
        lines.append(f"judge agrees with the verifier on {source}: {fraction:.0%} of {n} pairs")
    return lines


def lm_eval_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """lm-eval's scores as table rows: model, task, metric, value ± stderr, n, form."""
    rows = []
    for model, entry in sorted(report.get("lm_eval", {}).items()):
        for task, t in sorted(entry["tasks"].items()):
            for metric, value in t["metrics"].items():
                err = (t.get("stderr") or {}).get(metric)
                rows.append(dict(
                    model=model, task=task, metric=metric, value=f"{value:.3f}",
                    stderr="" if not isinstance(err, int | float) else f"± {err:.3f}",
                    n=str(t.get("n") or "—"), form=str(t.get("output_type") or "—"),
                ))  # fmt: skip
    return rows
