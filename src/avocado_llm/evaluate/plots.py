"""The report's PNG plots, drawn with matplotlib's Agg canvas.

Figures are built as ``Figure`` objects on their own ``FigureCanvasAgg``, never through pyplot,
so drawing needs no display, touches no global state and is safe in any thread.
"""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avocado_llm.evaluate.extras import HarvestStats
from avocado_llm.evaluate.report import Table

TEACHER_COLOURS = ("#4c72b0", "#55a868", "#8172b2", "#64b5cd", "#937860", "#da8bc3")
STUDENT_COLOURS = ("#dd8452", "#c44e52")
BASELINE_COLOURS = ("#8c8c8c", "#b5b5b5", "#6e6e6e")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches itself to the figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _colours(table: Table) -> dict[str, str]:
    """Teachers in cool colours, students in warm ones, baselines in grey."""
    palette = {"teacher": TEACHER_COLOURS, "student": STUDENT_COLOURS, "baseline": BASELINE_COLOURS}
    seen = {role: 0 for role in palette}
    colours = {}
    for name in table.names:
        role = table.models[name]["role"]
        colours[name] = palette[role][seen[role] % len(palette[role])]
        seen[role] += 1
    return colours


def accuracy_png(table: Table) -> bytes:
    """Grouped bars: one group per family, one bar per model, 95% intervals as error bars."""
    n_models, n_families = len(table.names), len(table.families)
    fig = Figure(figsize=(max(6.0, 1.1 * n_families * max(1, n_models / 3) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / n_models
    colours = _colours(table)
    for i, name in enumerate(table.names):
        model = table.models[name]
        xs, heights, low, high = [], [], [], []
        for j, family in enumerate(table.families):
            stats = model["families"].get(family)
            if stats is None:
                continue
            acc, (lo, hi) = stats["accuracy"], stats["ci95"]
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(acc)
            low.append(max(0.0, acc - lo))
            high.append(max(0.0, hi - acc))
        ax.bar(
            xs,
            heights,
            width * 0.92,
            yerr=[low, high],
            capsize=2,
            color=colours[name],
            hatch="//" if model["role"] == "baseline" else None,
            edgecolor="white",
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
            label=f"{name} ({model['role']})",
        )
    ax.set_xticks(range(n_families), table.families)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    _tidy(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    fig.set_layout_engine("constrained")
    return _png(fig)


def loss_png(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """Training loss against step, one line per run; log scale when it falls a lot."""
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, points in curves.items():
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, label=name, linewidth=1.2)
    values = [loss for points in curves.values() for _, loss in points]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _tidy(ax)
    ax.legend(frameon=False, fontsize="small")
    return _png(fig)


def harvest_png(harvest: dict[str, HarvestStats], fusion: dict[str, dict[str, float]]) -> bytes:
    """Answers and tokens per teacher (if there is a harvest); share kept by each fusion."""
    panels = 2 * bool(harvest) + bool(fusion)
    fig = Figure(figsize=(3.6 * panels + 0.8, 3.6), layout="constrained")
    axes = iter(fig.subplots(1, panels, squeeze=False)[0])
    teachers = list(harvest) or sorted({t for shares in fusion.values() for t in shares})
    colours = {t: TEACHER_COLOURS[i % len(TEACHER_COLOURS)] for i, t in enumerate(teachers)}
    if harvest:
        for title, value in (("answers", "answers"), ("completion tokens", "tokens")):
            ax = next(axes)
            heights = [getattr(harvest[t], value) for t in teachers]
            ax.bar(teachers, heights, color=[colours[t] for t in teachers])
            ax.set_title(title, fontsize="medium")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
            _tidy(ax, rotate=True)
    if fusion:
        ax = next(axes)
        width = 0.8 / len(fusion)
        for i, (label, shares) in enumerate(fusion.items()):
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(teachers))]
            ax.bar(xs, [shares.get(t, 0.0) for t in teachers], width * 0.92, label=label)
        ax.set_xticks(range(len(teachers)), teachers)
        ax.set_ylim(0, 1.05)
        ax.set_title("share kept by fusion", fontsize="medium")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.legend(frameon=False, fontsize="small")
        _tidy(ax, rotate=True)
    return _png(fig)


def _tidy(ax: Axes, rotate: bool = False) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if rotate:
        ax.tick_params(axis="x", labelrotation=20)
