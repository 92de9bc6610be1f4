"""``report.json``'s schema (written out in :mod:`avocado_llm.evaluate.report`'s docstring):
the roles a model plays, and every way a report, its lm-eval scores or its judged counts break
it (:func:`check_report`)."""

from __future__ import annotations

from typing import Any

ROLES = ("teacher", "student", "baseline")
"""Every model in a report plays one of these roles; tables list them in this order."""
REPORT_FILE = "report.json"


class ReportError(RuntimeError):
    """A report, or one of its optional inputs, that cannot be read."""


def _is_fraction(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and 0.0 <= x <= 1.0


def check_report(report: Any) -> list[str]:
    """Every way ``report`` breaks the schema (:mod:`avocado_llm.evaluate.report`; empty when it
    is valid)."""
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        return ["the report is not an object with a 'models' object"]
    lm_eval = report.get("lm_eval", {})
    if not report["models"] and not lm_eval:
        return ["the report has no models; evaluate one with `avocado eval RECIPE`"]
    problems = lm_eval_problems(lm_eval)
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
    return problems + judged_problems(report.get("judged", {}))


def lm_eval_problems(lm_eval: Any) -> list[str]:
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


def judged_problems(judged: Any) -> list[str]:
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
