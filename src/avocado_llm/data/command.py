"""``avocado data check RECIPE [--json]``: read every prompt source of a recipe, call no model.

Per source: rows read, train / held-out prompts, duplicates dropped, training prompts dropped
because a held-out prompt leaks into them (contaminated), and bad rows skipped, with why.
``--json`` prints ``{"sources": {NAME: {"rows", "train", "heldout", "duplicates",
"contaminated", "skipped", "errors": [...]}}}``. A source that cannot be used (a missing column,
bad rows under ``on_error: fail``) ends the command with ``error: ...`` and status 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from avocado_llm.config.cli import EXIT_ERROR, add_command, recipe_from_args, report_errors

HELP = "read every prompt source of a recipe: rows, splits, duplicates, leaks, bad rows"
DESCRIPTION = """\
Read every source in RECIPE's data.sources (no model is called) and print per source: rows
read, train / held-out prompts, duplicates dropped, training prompts dropped because they match
a held-out prompt (exactly or by a 13-word run), and bad rows skipped and why.
"""


def add_data_command(commands: Any) -> None:
    """Register ``data check`` on the ``avocado`` parser's subcommands."""
    data = commands.add_parser("data", help="your own prompt sources (check, example)")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="<data command>")
    p = add_command(data_cmds, "check", run_data_check, HELP, DESCRIPTION, recipe=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    from avocado_llm.data.examples import add_example_command
    from avocado_llm.data.real_examples import add_real_example_command

    add_example_command(data_cmds)
    add_real_example_command(data_cmds)


def run_data_check(args: argparse.Namespace) -> int:
    from avocado_llm.data.prompts import check_sources
    from avocado_llm.data.sources import DataError

    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR

    def check() -> int:
        reports = check_sources(recipe.data.sources)
        if args.json:
            out: dict[str, Any] = {"sources": {n: r.as_json() for n, r in reports.items()}}
            print(json.dumps(out, ensure_ascii=False))
            return 0
        if not reports:
            print(f"{args.recipe}: no data.sources")
        for name, r in reports.items():
            print(
                f"{name}: {r.rows:,} rows read → {r.train:,} train, {r.heldout:,} held-out; "
                f"{r.duplicates:,} duplicates dropped, {r.contaminated:,} contaminated "
                f"(dropped from train), {r.skipped:,} skipped"
            )
            for reason, n in r.reasons.most_common():
                print(f"  skipped {n:,}: {reason}")
            for error in r.errors:
                print(f"    {error}")
        return 0

    return report_errors(check, (DataError, OSError))  # OSError: a source unreadable midway
