"""``report.md``: the accuracy table, verdicts, judged sources, lm-eval scores and speed."""

from __future__ import annotations

from typing import Any

from avocado_llm.evaluate.report_tables import (
    Table,
    agreement_lines,
    judged_rows,
    lm_eval_rows,
    summary_table,
    verdicts,
)


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
