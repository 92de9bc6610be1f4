"""``avocado distill``: train the recipe's student on its fused harvest.

avocado distill recipes/tiny.yaml             # → runs/tiny/student/
avocado distill recipes/tiny.yaml --resume    # continue from the latest checkpoint
avocado distill recipes/tiny.yaml --force     # start over (deletes the checkpoints)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avocado_llm.config import cli

HELP = "train the student on the fused teacher answers (SFT + cross-tokenizer KD)"
DESCRIPTION = """\
Build RECIPE's student (its own tokenizer), align every weighted teacher's top-k onto its
tokens, and train with alpha_ce·CE + (1-alpha_ce)·KD. Writes an HF model directory with
avocado.json, a model card and loss curves; checkpoints every training.checkpoint_every steps.
"""


def add_distill_command(commands: Any) -> None:
    """Register ``distill`` on the ``avocado`` parser's subcommands."""
    p = cli.add_command(commands, "distill", run_distill_command, HELP, DESCRIPTION, recipe=True)
    p.add_argument("--strategy", help="fusion strategy whose examples to train on [recipe's]")
    p.add_argument("--out", type=Path, help="output directory [<output_dir>/<name>/student]")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint (refused if the recipe's student or training "
        "fields, seed or fused examples changed; checkpoint_every, eval_every and device may)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start over: delete the directory's checkpoints and train from step 0",
    )
    p.add_argument("--no-kd", action="store_true", help="SFT only: no token-level distillation")


def run_distill_command(args: argparse.Namespace) -> int:
    from avocado_llm.config.fingerprint import StaleError
    from avocado_llm.distill.pipeline import distill
    from avocado_llm.harvest.files import RunDirError

    recipe = cli.recipe_from_args(args)
    if recipe is None:
        return cli.EXIT_ERROR
    if args.resume and args.force:
        return cli.fail(
            "--resume continues a training, --force starts over: pick one", cli.EXIT_USAGE
        )

    def train() -> int:
        out = distill(
            recipe, strategy=args.strategy, out=args.out, resume=args.resume,
            use_kd=not args.no_kd, force=args.force,
        )  # fmt: skip
        print(f"student saved to {out}")
        return 0

    return cli.report_errors(
        train,
        (FileNotFoundError, ValueError, StaleError, RunDirError),
        interrupted="interrupted: run the same command with --resume to continue",
    )
