"""The evaluation report: ``report.json`` (the truth), and ``report.md``, ``report.html`` and PNG
plots drawn from it (:func:`write_report`).

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

The parts: :mod:`~avocado_llm.evaluate.report_schema` (roles, :func:`check_report`),
:mod:`~avocado_llm.evaluate.report_store` (reading and merging ``report.json``),
:mod:`~avocado_llm.evaluate.report_tables` (the table, verdicts and rows every rendering shares)
and :mod:`~avocado_llm.evaluate.report_markdown` (``report.md``); this module re-exports them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avocado_llm.evaluate.report_markdown import render_markdown
from avocado_llm.evaluate.report_schema import REPORT_FILE, ROLES, ReportError, check_report
from avocado_llm.evaluate.report_store import (
    drop_models,
    load_report,
    update_judged,
    update_lm_eval,
    update_report,
    write_answers,
    write_text_atomic,
)
from avocado_llm.evaluate.report_tables import (
    FAMILY_MARGIN,
    Table,
    agreement_lines,
    judged_rows,
    lm_eval_rows,
    summary_table,
    verdicts,
)
from avocado_llm.harvest.files import atomic_write

__all__ = [
    "FAMILY_MARGIN",
    "REPORT_FILE",
    "ROLES",
    "ReportError",
    "ReportFiles",
    "Table",
    "agreement_lines",
    "check_report",
    "drop_models",
    "judged_rows",
    "lm_eval_rows",
    "load_report",
    "render_markdown",
    "summary_table",
    "update_judged",
    "update_lm_eval",
    "update_report",
    "verdicts",
    "write_answers",
    "write_report",
]


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
    write_text_atomic(eval_dir / "report.md", markdown)
    html = render_html(report, table, verdicts(report), figures, extras.title)
    write_text_atomic(eval_dir / "report.html", html)
    return ReportFiles(eval_dir / "report.md", eval_dir / "report.html", images)
