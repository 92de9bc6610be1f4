"""``report.html``: one self-contained page (styles inline, plots as base64 data URIs), so it can
be mailed or archived alone. Rendered by Jinja2 with autoescaping on: model names come from
users and must not become markup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, StrictUndefined

from avocado_llm.evaluate.report import Table, agreement_lines, judged_rows, lm_eval_rows


@dataclass(frozen=True)
class Plot:
    file: str
    """The PNG's name beside the page."""
    caption: str
    uri: str
    """``data:image/png;base64,...``"""


TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}{% if recipe %} — {{ recipe }}{% endif %}</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
         max-width: 1100px; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.6rem; margin-bottom: .2rem; }
  .meta { color: #666; margin-top: 0; }
  table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
  th, td { padding: .35rem .7rem; border-bottom: 1px solid #ddd; text-align: right; }
  th:first-child, td:first-child, #accuracy th:nth-child(2), td.role { text-align: left; }
  thead th { border-bottom: 2px solid #444; }
  td small { color: #777; display: block; font-size: .75rem; font-weight: 400; }
  td.best { font-weight: 700; }
  tr.student { background: #fff4ec; }
  tr.baseline { color: #555; }
  .verdict { font-size: 1.05rem; padding: .5rem .8rem; border-left: 4px solid #dd8452;
             background: #fafafa; }
  figure { margin: 1.5rem 0; }
  figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
  figcaption { color: #555; font-size: .9rem; }
</style>
</head>
<body>
<h1>{{ title }}{% if recipe %} — {{ recipe }}{% endif %}</h1>
<p class="meta">Held-out accuracy per task family with 95% Wilson intervals; overall is the mean
over families; best per column in bold. Generated {{ generated }}.</p>
<table id="accuracy">
  <thead><tr><th>model</th><th>role</th>
  {%- for f in columns %}<th>{{ f }}</th>{% endfor %}<th>params</th></tr></thead>
  <tbody>
  {%- for row in rows %}
  <tr class="{{ row.role }}"><td>{{ row.name }}</td><td class="role">{{ row.role }}</td>
    {%- for cell in row.cells %}
    <td{% if cell.best %} class="best"{% endif %}>{{ cell.text }}
      {%- if cell.ci %}<small>{{ cell.ci }}</small>{% endif %}</td>
    {%- endfor %}
    <td>{{ row.params }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% for line in verdicts %}<p class="verdict">{{ line }}</p>
{% endfor %}
{%- if judged %}
<h2>Judged sources</h2>
<p class="meta">Sources without a verifier: a judge compares the student's answer with each
teacher's, asked in both orders; win / tie / loss of the student.</p>
<table id="judged">
  <thead><tr><th>source</th><th>student</th><th>teacher</th><th>win</th><th>tie</th>
  <th>loss</th><th>n</th><th>judge</th></tr></thead>
  <tbody>
  {%- for r in judged %}
  <tr><td>{{ r.source }}</td><td>{{ r.student }}</td><td>{{ r.model }}</td><td>{{ r.win }}</td>
    <td>{{ r.tie }}</td><td>{{ r.loss }}</td><td>{{ r.n }}</td><td>{{ r.judge }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- for line in agreement %}
<p class="meta judge-agreement">{{ line }}</p>
{%- endfor %}
{%- endif %}
{%- if lm_eval %}
<h2>lm-evaluation-harness</h2>
<p class="meta">Scores from lm-evaluation-harness (<code>avocado eval --lm-eval</code>): the
recipe's held-out tasks in generation and multiple-choice form, or its standard tasks.</p>
<table id="lm-eval">
  <thead><tr><th>model</th><th>task</th><th>metric</th><th>value</th><th>stderr</th><th>n</th>
  <th>form</th></tr></thead>
  <tbody>
  {%- for r in lm_eval %}
  <tr><td>{{ r.model }}</td><td>{{ r.task }}</td><td>{{ r.metric }}</td><td>{{ r.value }}</td>
    <td>{{ r.stderr }}</td><td>{{ r.n }}</td><td>{{ r.form }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{%- for plot in plots %}
<figure><img src="{{ plot.uri }}" alt="{{ plot.caption }}" data-file="{{ plot.file }}">
  <figcaption>{{ plot.caption }}</figcaption></figure>
{% endfor %}
{%- if rows %}
<h2>Generation speed (tokens/s)</h2>
<table id="speed">
  <thead><tr><th>model</th>{% for f in families %}<th>{{ f }}</th>{% endfor %}</tr></thead>
  <tbody>
  {%- for row in rows %}
  <tr><td>{{ row.name }}</td>{% for s in row.speeds %}<td>{{ s }}</td>{% endfor %}</tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
</body>
</html>
"""

_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)


def _rows(table: Table) -> list[dict[str, Any]]:
    rows = []
    for name in table.names:
        model = table.models[name]
        cells = []
        for column in [*table.families, "overall"]:
            value = table.accuracy(name, column)
            stats = model["families"].get(column, {})
            ci = f"[{stats['ci95'][0]:.1%}, {stats['ci95'][1]:.1%}]" if stats else ""
            text = "—" if value is None else f"{value:.1%}"
            cells.append({"text": text, "ci": ci, "best": table.is_best(name, column)})
        speeds = [
            f"{model['families'][f]['tokens_per_s']:,.0f}" if f in model["families"] else "—"
            for f in table.families
        ]
        params = f"{model['params']:,}" if model["params"] is not None else "—"
        rows.append(dict(name=name, role=model["role"], cells=cells, params=params, speeds=speeds))
    return rows


def render_html(
    report: dict[str, Any], table: Table, verdicts: list[str], plots: list[Plot], title: str
) -> str:
    return _ENV.from_string(TEMPLATE).render(
        title=title,
        recipe=report.get("recipe"),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        columns=[*table.families, "overall"],
        families=table.families,
        rows=_rows(table),
        verdicts=verdicts,
        judged=judged_rows(report),
        agreement=agreement_lines(report),
        lm_eval=lm_eval_rows(report),
        plots=plots,
    )
