"""The evaluation report: ``report.json`` (the truth), and ``report.md``, ``report.html`` and PNG
plots drawn from it.

``report.json`` holds one entry per model, whatever evaluated it, so evaluating another model
adds or replaces one entry (:func:`update_report`, under a file lock, written atomically)::

    {"recipe": "tiny",
     "models": {"qwen-tiny": {"role": "teacher", "params": 1234567, "overall": 0.61,
                              "families": {"arithmetic": {"accuracy": 0.85, "n": 300,
                                           "ci95": [0.80, 0.89], "tokens_per_s": 412.0}}}}}

Accuracies are fractions in [0, 1]; ``overall`` is the mean over the model's families;
``params`` is null for endpoints. :func:`write_report` regenerates everything else from it.

``lm_eval`` (optional) holds lm-evaluation-harness's scores per model and task
(:func:`update_lm_eval`, from ``avocado eval --lm-eval``)::

    "lm_eval": {"student": {"source": "runs/tiny/student", "lm_eval_version": "0.4.13",
                            "tasks": {"avocado_arithmetic_mc": {"metrics": {"acc": 0.93},
                                      "stderr": {"acc": 0.02}, "n": 100,
                                      "output_type": "multiple_choice"}}}}
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avocado_llm.harvest.files import atomic_write

ROLES = ("teacher", "student", "baseline")
"""Every model in a report plays one of these roles; tables list them in this order."""
REPORT_FILE = "report.json"


class ReportError(RuntimeError):
    """A report, or one of its optional inputs, that cannot be read."""


def _atomic_write(path: Path, text: str) -> None:
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


def _is_fraction(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and 0.0 <= x <= 1.0


def check_report(report: Any) -> list[str]:
    """Every way ``report`` breaks the schema above (empty when it is valid)."""
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        return ["the report is not an object with a 'models' object"]
    lm_eval = report.get("lm_eval", {})
    if not report["models"] and not lm_eval:
        return ["the report has no models; evaluate one with `avocado eval RECIPE`"]
    problems = _lm_eval_problems(lm_eval)
    for name, m in report["models"].items():
        at = f"models.{name}"
        if not isinstance(m, dict):
            problems.append(f"{at}: not an object")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"{at}.role: {m.get('role')!r} is not one of {', '.join(ROLES)}")
        params = m.get("params")
        if params is not None and (not isinstance(params, int) or isinstance(params, bool)):
            problems.append(f"{at}.params: {params!r} is neither an integer nor null")
        if not _is_fraction(m.get("overall")):
            problems.append(f"{at}.overall: {m.get('overall')!r} is not a fraction in [0, 1]")
        families = m.get("families")
        if not isinstance(families, dict) or not (families or m.get("open_sources")):
            problems.append(f"{at}.families: no families")  # open-ended sources only: judged
            continue
        for family, s in families.items():
            where = f"{at}.families.{family}"
            ci = s.get("ci95") if isinstance(s, dict) else None
            if not isinstance(s, dict) or not _is_fraction(s.get("accuracy")):
                problems.append(f"{where}.accuracy: not a fraction in [0, 1]")
            elif not isinstance(s.get("n"), int) or s["n"] < 0:
                problems.append(f"{where}.n: {s.get('n')!r} is not a count")
            elif not (isinstance(ci, list) and len(ci) == 2 and all(map(_is_fraction, ci))):
                problems.append(f"{where}.ci95: {ci!r} is not [lo, hi] in [0, 1]")
            elif not ci[0] <= s["accuracy"] <= ci[1]:
                problems.append(f"{where}.ci95: {ci!r} does not contain {s['accuracy']}")
            elif not isinstance(s.get("tokens_per_s"), int | float) or s["tokens_per_s"] < 0:
                problems.append(f"{where}.tokens_per_s: {s.get('tokens_per_s')!r} is not >= 0")
    return problems + _judged_problems(report.get("judged", {}))


def _lm_eval_problems(lm_eval: Any) -> list[str]:
    """Every way ``lm_eval`` breaks ``{MODEL: {"tasks": {TASK: {"metrics": {NAME: number}}}}}``."""
    if not isinstance(lm_eval, dict):
        return ["lm_eval: not an object"]
    problems = []
    for model, entry in lm_eval.items():
        runs = entry.get("tasks") if isinstance(entry, dict) else None
        if not isinstance(runs, dict):
            problems.append(f"lm_eval.{model}.tasks: not an object")
            continue
        for task, t in runs.items():
            metrics = t.get("metrics") if isinstance(t, dict) else None
            numbers = isinstance(metrics, dict) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
            )
            if not numbers:
                problems.append(f"lm_eval.{model}.tasks.{task}.metrics: not numbers by name")
    return problems


def _judged_problems(judged: Any) -> list[str]:
    """Every way ``judged`` breaks ``{SOURCE: {MODEL: {win, tie, loss, n}}}`` with
    win + tie + loss == n."""
    if not isinstance(judged, dict):
        return ["judged: not an object"]
    problems = []
    for source, rivals in judged.items():
        for model, c in rivals.items() if isinstance(rivals, dict) else [(None, None)]:
            counts = [c.get(k) for k in ("win", "tie", "loss", "n")] if isinstance(c, dict) else []
            ok = len(counts) == 4 and all(isinstance(x, int) and x >= 0 for x in counts)
            if not ok or sum(counts[:3]) != counts[3]:
                problems.append(f"judged.{source}.{model}: not win + tie + loss == n counts")
    return problems


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
        _atomic_write(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def update_lm_eval(
    eval_dir: str | Path, name: str, entry: dict[str, Any], recipe: str | None = None
) -> dict[str, Any]:
    """Merge lm-eval's scores of model ``name`` into ``eval_dir/report.json`` (``lm_eval``):
    its tasks run now replace the same tasks' earlier scores, the others are kept."""
    eval_dir = Path(eval_dir)
    problems = _lm_eval_problems({name: entry})
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
        _atomic_write(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


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


def update_judged(
    eval_dir: str | Path,
    judged: dict[str, dict[str, dict[str, Any]]],
    checks: dict[str, dict[str, dict[str, int]]] | None = None,
) -> None:
    """Add or replace the judged counts of each (source, model) of ``judged`` in
    ``eval_dir/report.json`` (the other pairs are kept). ``checks`` (verified sources: how often
    the judge sided with the verifier, per teacher: ``{"agree", "n"}``) are kept under
    ``judge_checks`` and summed into ``judge_agreement``: ``{SOURCE: fraction}``."""
    problems = _judged_problems(judged)
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
        _atomic_write(eval_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")


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


def write_answers(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line: what the model answered to each example, and whether right."""
    _atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# --- the table every rendering shares ---------------------------------------------------------


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


def _cell(table: Table, name: str, column: str) -> str:
    value = table.accuracy(name, column)
    if value is None:
        return "—"
    return f"**{value:.1%}**" if table.is_best(name, column) else f"{value:.1%}"


def render_markdown(report: dict[str, Any], title: str = "Evaluation") -> str:
    """The report as Markdown: accuracy table (best per column in bold), verdict, speed."""
    table = summary_table(report)
    head = ["model", "role", *table.families, "overall", "params"]
    lines = [
        f"# {title}" + (f" — {report['recipe']}" if report.get("recipe") else ""),
        "",
        "Held-out accuracy per task family; overall is the mean over families. "
        "Best per column in **bold**; 95% Wilson intervals are in report.json and report.html.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * 2 + "---:|" * (len(head) - 2),
    ]
    for name in table.names:
        m = table.models[name]
        cells = [_cell(table, name, c) for c in [*table.families, "overall"]]
        params = f"{m['params']:,}" if m["params"] is not None else "—"
        lines.append("| " + " | ".join([name, m["role"], *cells, params]) + " |")
    lines += ["", *verdicts(report)]
    judged = judged_rows(report)
    if judged:
        lines += ["", "## Judged sources (student against each teacher)", ""]
        lines += ["Both answer orders asked; win / tie / loss of the student, with counts.", ""]
        lines += ["| source | student | teacher | win | tie | loss | n | judge |"]
        lines += ["|---|---|---|---:|---:|---:|---:|---|"]
        for r in judged:
            cells = [r[k] for k in ("source", "student", "model", "win", "tie", "loss")]
            lines.append("| " + " | ".join([*cells, str(r["n"]), r["judge"]]) + " |")
        lines += ["", *agreement_lines(report)] if agreement_lines(report) else []
    lm_rows = lm_eval_rows(report)
    if lm_rows:
        lines += ["", "## lm-evaluation-harness", ""]
        lines += ["| model | task | metric | value | stderr | n | form |"]
        lines += ["|---|---|---|---:|---:|---:|---|"]
        for r in lm_rows:
            cells = [r[k] for k in ("model", "task", "metric", "value", "stderr", "n", "form")]
            lines.append("| " + " | ".join(cells) + " |")
    if not table.names:  # lm-eval's scores only, so far
        return "\n".join(lines) + "\n"
    lines += ["", "## Generation speed (tokens/s)", ""]
    lines += ["| model | " + " | ".join(table.families) + " |"]
    lines += ["|---|" + "---:|" * len(table.families)]
    for name in table.names:
        fams = table.models[name]["families"]
        speeds = [f"{fams[f]['tokens_per_s']:,.0f}" if f in fams else "—" for f in table.families]
        lines.append("| " + " | ".join([name, *speeds]) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    images: list[Path]


def write_report(eval_dir: str | Path, extra: dict[str, Any] | None = None) -> ReportFiles:
    """Regenerate ``report.md``, ``report.html`` and the PNG plots from ``report.json``.

    ``extra`` (optional) is read by :func:`avocado_llm.evaluate.extras.gather_extras`: the run
    directory whose training losses, harvest and fusion reports are plotted when they exist,
    or explicit files. A plot without input is skipped and its old PNG removed."""
    # Imported here: matplotlib and jinja2 load only when a report is drawn.
    from avocado_llm.evaluate import plots
    from avocado_llm.evaluate.extras import gather_extras
    from avocado_llm.evaluate.page import Plot, render_html

    eval_dir = Path(eval_dir)
    report = load_report(eval_dir)
    extras = gather_extras(eval_dir, extra)
    table = summary_table(report)
    drawn = {
        "accuracy.png": plots.accuracy_png(table) if table.names else None,
        "loss.png": plots.loss_png(extras.loss_curves) if extras.loss_curves else None,
        "harvest.png": (
            plots.harvest_png(extras.harvest, extras.fusion)
            if extras.harvest or extras.fusion
            else None
        ),
    }
    captions = {
        "accuracy.png": "Held-out accuracy per family, with 95% Wilson intervals.",
        "loss.png": "Student training loss per step.",
        "harvest.png": "Harvest: answers and tokens per teacher; share kept by fusion.",
    }
    figures, images = [], []
    for file, png in drawn.items():
        if png is None:
            (eval_dir / file).unlink(missing_ok=True)
            continue
        atomic_write(eval_dir / file, png)  # a link planted there is replaced, not followed
        images.append(eval_dir / file)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        figures.append(Plot(file, captions[file], uri))
    markdown = render_markdown(report, extras.title)
    markdown += "".join(f"\n![{f.caption}]({f.file})\n" for f in figures)
    _atomic_write(eval_dir / "report.md", markdown)
    html = render_html(report, table, verdicts(report), figures, extras.title)
    _atomic_write(eval_dir / "report.html", html)
    return ReportFiles(eval_dir / "report.md", eval_dir / "report.html", images)
