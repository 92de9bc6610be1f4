"""The student's model card and loss plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from avocado_llm.harvest.files import atomic_write


def model_card(meta: dict[str, Any]) -> str:
    """A README that says what the student derives from and under which terms."""
    teachers = meta["teachers"]
    lines = [
        f"# {meta['name']} — an Avocado student",
        "",
        f"A {meta['params']:,}-parameter causal LM distilled by Avocado from "
        f"{len(teachers)} teacher(s) (fusion: `{meta['fusion']}`, token-level KD: "
        f"{'yes' if meta['token_level_kd'] else 'no'}).",
        "",
        "## Derived from",
        "",
        "| teacher | licence |",
        "|---|---|",
        *(f"| {t['name']} | {t['licence']} |" for t in teachers),
        "",
        "## Terms",
        "",
    ]
    gemma = [t["name"] for t in teachers if "gemma" in t["licence"].lower()]
    if gemma:
        lines += [
            f"This model learned from outputs of {', '.join(gemma)}, licensed under the Gemma "
            "Terms of Use. It is a **Model Derivative** under those terms: its use and "
            "distribution are subject to the Gemma Terms of Use and Prohibited Use Policy, "
            "which must be passed on to its users.",
            "",
        ]
    others = sorted({t["licence"] for t in teachers if t["name"] not in gemma})
    if others:
        lines += [
            "Other teachers' terms apply to the extent their licences reach derived models: "
            + "; ".join(others)
            + ".",
            "",
        ]
    lines += [
        "## Provenance",
        "",
        f"- harvest manifest sha256: `{meta['harvest_manifest_sha256']}`",
        "- training recipe and metrics: `avocado.json`",
        "",
    ]
    return "\n".join(lines)


def plot_losses(log: Path, out: Path) -> None:
    """``loss.jsonl`` → a PNG of total, CE and KD loss per step."""
    if not log.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for key in ("loss", "ce", "kd"):
        ax.plot(steps, [r[key] for r in rows], label=key, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per completion token")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(out, buffer.getvalue())  # replaces a link at ``out``, never writes through it
