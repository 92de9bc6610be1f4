"""``avocado fuse``: turn a recipe's harvest into training examples and print what was chosen.

avocado fuse recipes/tiny.yaml                       # fusion.strategy of the recipe
avocado fuse recipes/tiny.yaml --strategy min_ce     # loads the local teachers as scorers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from avocado_llm.config.cli import EXIT_ERROR, add_command, recipe_from_args, report_errors
from avocado_llm.fusion.example import FusionReport

HELP = "choose, per harvested prompt, the answer to learn and the teachers to learn it from"
DESCRIPTION = """\
Read RECIPE's harvest and choose, for every prompt, a target answer and per-teacher weights
(strategies: verify, vote, min_ce, judge, all, single:<teacher>). Families in world.unverified
and data sources without a verifier are fused without gold; a source with one is verified by it.
Writes <out>/<strategy>.parquet and <out>/<strategy>.report.json, and prints the report.
"""


def add_fuse_command(commands: Any) -> None:
    """Register ``fuse`` on the ``avocado`` parser's subcommands."""
    p = add_command(commands, "fuse", run_fuse_command, HELP, DESCRIPTION, recipe=True, device=True)
    p.add_argument("--strategy", help="fusion strategy [the recipe's fusion.strategy]")
    p.add_argument("--harvest", type=Path, help="harvest directory [<output_dir>/<name>/harvest]")
    p.add_argument("--out", type=Path, help="output directory [<output_dir>/<name>/fusion]")


def run_fuse_command(args: argparse.Namespace) -> int:
    from avocado_llm.fusion import FusionError, fuse_recipe
    from avocado_llm.teachers import TeacherError

    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR

    def fuse_and_show() -> int:
        fused = fuse_recipe(
            recipe, args.strategy, harvest_dir=args.harvest, out=args.out, device=args.device
        )
        assert fused.report is not None  # (a fusion ran: no reuse asked)
        title = f"Fusion {fused.strategy!r}: {fused.examples:,} examples → {fused.path}"
        console = Console() if sys.stdout.isatty() else Console(width=200)
        console.print(report_table(fused.report, title))
        blind = [*recipe.world.unverified]
        blind += [s.name for s in recipe.data.sources if s.verifier == "none"]
        unverified = ", ".join(f for f in blind if f in fused.report.families)
        console.print(
            "target acc. is evaluation data: computed with gold after fusion, never used by it"
            + (f"; fused without gold: {unverified}" if unverified else "")
        )
        return 0

    return report_errors(fuse_and_show, (FusionError, TeacherError))


def report_table(report: FusionReport, title: str) -> Table:
    """Per family: prompts, kept, examples, wins per teacher, target accuracy (evaluation)."""
    teachers = sorted({t for f in report.families.values() for t in f.wins})
    refs = any(f.references for f in report.families.values())  # fusion.use_reference
    table = Table(title=title)
    table.add_column("family")
    wins_cols = (f"wins {t}" for t in teachers)
    for col in ("prompts", "kept", "examples", *wins_cols, *(["reference"] if refs else [])):
        table.add_column(col, justify="right")
    table.add_column("target acc.", justify="right")
    for name, f in report.families.items():
        accuracy = "—" if f.target_accuracy is None else f"{f.target_accuracy:.0%}"
        wins = [f"{f.wins.get(t, 0):,}" for t in teachers] + ([f"{f.references:,}"] if refs else [])
        table.add_row(name, f"{f.total:,}", f"{f.kept:,}", f"{f.examples:,}", *wins, accuracy)
    return table
