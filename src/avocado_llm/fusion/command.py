"""``avocado fuse``: turn a recipe's harvest into training examples and print what was chosen.

avocado fuse recipes/tiny.yaml                       # fusion.strategy of the recipe
avocado fuse recipes/tiny.yaml --strategy min_ce     # loads the local teachers as scorers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from avocado_llm.config import Recipe
from avocado_llm.config.fingerprint import digest
from avocado_llm.fusion.example import FusionReport

if TYPE_CHECKING:
    import pyarrow as pa


def recipe_records(recipe: Recipe, records: pa.Table) -> pa.Table:
    """The records this recipe's harvest asks for: its teachers, its prompts, its sampling and
    samples. A harvest directory keeps the answers of earlier settings too (their keys differ,
    so they are never mistaken for done); fusion must not learn from them."""
    import pyarrow as pa

    from avocado_llm.harvest import harvest_prompts
    from avocado_llm.teachers import sampling_params

    params = sampling_params(recipe.harvest, recipe.seed).as_dict()
    samples = params.pop("n")
    prompts = {ex.id for ex in harvest_prompts(recipe)}
    teachers = {t.name for t in recipe.teachers}

    def wanted(row: dict[str, Any]) -> bool:
        sampling = {k: v for k, v in json.loads(row["sampling"]).items() if k != "n"}
        return (
            row["teacher"] in teachers
            and row["prompt_id"] in prompts
            and row["sample_index"] < samples
            and sampling == params
        )

    rows = records.select(["teacher", "prompt_id", "sample_index", "sampling"]).to_pylist()
    return records.filter(pa.array([wanted(row) for row in rows], type=pa.bool_()))


def fusion_fingerprint(recipe: Recipe, strategy: str, records: pa.Table) -> dict[str, Any]:
    """What makes a fused file: the fusion fields and the records it reads (their keys name
    teacher, revision, prompt and sampling; their completions are the answers)."""
    keys, texts = records["key"].to_pylist(), records["completion"].to_pylist()
    answers = sorted(zip(keys, texts, strict=True))
    return {
        "fusion.strategy": strategy,
        "fusion.min_weight": recipe.fusion.min_weight,
        "fusion.judge_teacher": recipe.fusion.judge_teacher,
        "world.unverified": sorted(recipe.world.unverified),
        "input:harvest records": f"{len(answers)} records, {digest(answers)}",
    }


def add_fuse_command(commands: Any) -> None:
    """Register ``fuse`` on the ``avocado`` parser's subcommands."""
    p = commands.add_parser(
        "fuse",
        help="choose, per harvested prompt, the answer to learn and the teachers to learn it from",
        description="Read RECIPE's harvest and choose, for every prompt, a target answer and "
        "per-teacher weights (strategies: verify, vote, min_ce, judge, all, single:<teacher>). "
        "Families in world.unverified are fused without gold. Writes <out>/<strategy>.parquet "
        "and <out>/<strategy>.report.json, and prints the report.",
    )
    p.add_argument("recipe", type=Path)
    p.add_argument("--strategy", help="fusion strategy [the recipe's fusion.strategy]")
    p.add_argument("--harvest", type=Path, help="harvest directory [<output_dir>/<name>/harvest]")
    p.add_argument("--out", type=Path, help="output directory [<output_dir>/<name>/fusion]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps [auto]")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    p.set_defaults(func=run_fuse_command)


def run_fuse_command(args: argparse.Namespace) -> int:
    from avocado_llm.config import load_recipe_or_report
    from avocado_llm.fusion import FusionError, fuse, scorers_needed, write_fused
    from avocado_llm.harvest import read_records
    from avocado_llm.teachers import TeacherError, load_teacher

    recipe = load_recipe_or_report(args.recipe, args.set)
    if recipe is None:
        return 1
    strategy = args.strategy or recipe.fusion.strategy
    harvest_dir = args.harvest or recipe.harvest_dir
    out = args.out or recipe.run_dir / "fusion"
    records = read_records(harvest_dir)
    if records.num_rows == 0:
        print(f"error: no records in {harvest_dir}; run `avocado harvest {args.recipe}` first",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.harvest is None:  # the recipe's own harvest: only what its settings ask for
        total, records = records.num_rows, recipe_records(recipe, records)
        if records.num_rows < total:
            print(f"fusion: {total - records.num_rows:,} of {total:,} records in {harvest_dir} "
                  "were made with other harvest settings (teachers, prompts, sampling) and are "
                  "left out", file=sys.stderr)  # fmt: skip
        if records.num_rows == 0:
            print(f"error: no records of this recipe's harvest settings in {harvest_dir}; run "
                  f"`avocado harvest {args.recipe}` first", file=sys.stderr)  # fmt: skip
            return 1
    local = [t.name for t in recipe.teachers if t.kind == "local"]
    judge = recipe.fusion.judge_teacher
    needed = scorers_needed(strategy, local, judge)
    if strategy == "judge" and judge not in local:
        known = ", ".join(local) or "none"
        print(f"error: the judge strategy needs fusion.judge_teacher set to a local teacher "
              f"(one of {known}); it is {judge!r}", file=sys.stderr)  # fmt: skip
        return 1
    try:
        scorers = {
            cfg.name: load_teacher(cfg, recipe, args.device)
            for cfg in recipe.teachers
            if cfg.name in needed
        }
        examples, report = fuse(
            records,
            strategy,
            unverified=recipe.world.unverified,
            scorers=scorers,  # type: ignore[arg-type]
            judge=judge,
            min_weight=recipe.fusion.min_weight,
        )
    except (FusionError, TeacherError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fingerprint = fusion_fingerprint(recipe, strategy, records)
    path = write_fused(out, strategy, examples, report, fingerprint)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(report_table(report, f"Fusion {strategy!r}: {len(examples):,} examples → {path}"))
    unverified = ", ".join(f for f in recipe.world.unverified if f in report.families)
    console.print(
        "target acc. is evaluation data: computed with gold after fusion, never used by it"
        + (f"; fused without gold: {unverified}" if unverified else "")
    )
    return 0


def report_table(report: FusionReport, title: str) -> Table:
    """Per family: prompts, kept, examples, wins per teacher, target accuracy (evaluation)."""
    teachers = sorted({t for f in report.families.values() for t in f.wins})
    table = Table(title=title)
    table.add_column("family")
    for col in ("prompts", "kept", "examples", *(f"wins {t}" for t in teachers), "target acc."):
        table.add_column(col, justify="right")
    for name, f in report.families.items():
        accuracy = "—" if f.target_accuracy is None else f"{f.target_accuracy:.0%}"
        wins = (f"{f.wins.get(t, 0):,}" for t in teachers)
        table.add_row(name, f"{f.total:,}", f"{f.kept:,}", f"{f.examples:,}", *wins, accuracy)
    return table
