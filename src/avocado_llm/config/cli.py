"""What every ``avocado`` command shares: its parser, the recipe and ``--set`` arguments, and
how an error ends it (``error: ...`` on stderr and an exit status, never a traceback).

    p = add_command(commands, "fuse", run_fuse_command, HELP, DESCRIPTION, recipe=True)

    def run_fuse_command(args):
        recipe = recipe_from_args(args)
        if recipe is None:
            return 1
        return report_errors(lambda: fuse_it(recipe), (FusionError,), interrupted="...")

Only argparse and the recipe loader: any stage's command (and ``avocado run``) may import it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avocado_llm.config.loader import load_recipe_or_report
from avocado_llm.config.schema import Recipe

EXIT_ERROR = 1  # the command ran and failed (a bad recipe, a missing input, a refused stage)
EXIT_USAGE = 2  # the command's words are off (conflicting flags, a missing variable)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT (128 + 2)

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps [auto]"


def add_command(
    commands: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None = None,
    *,
    recipe: bool = False,
    overrides: bool | None = None,
    device: bool = False,
) -> argparse.ArgumentParser:
    """Register the subcommand ``name`` running ``func``. ``recipe`` adds the RECIPE argument
    and (unless ``overrides=False``) ``--set KEY=VALUE``; ``device`` adds ``--device``."""
    p: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description)
    if recipe:
        p.add_argument("recipe", type=Path)
    if overrides if overrides is not None else recipe:
        add_overrides(p)
    if device:
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=func)
    return p


def add_overrides(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): override one recipe field, e.g. ``seed=1``."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field",
    )


def recipe_from_args(args: argparse.Namespace) -> Recipe | None:
    """The recipe named by ``args.recipe`` with ``args.set``'s overrides, or ``None`` after
    printing every problem in it to stderr."""
    return load_recipe_or_report(args.recipe, getattr(args, "set", None))


def fail(message: object, code: int = EXIT_ERROR) -> int:
    """Print ``error: MESSAGE`` to stderr and return the exit status ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return code


def report_errors(
    body: Callable[[], int],
    errors: tuple[type[BaseException], ...],
    *,
    interrupted: str | None = None,
    interrupted_code: int = EXIT_INTERRUPTED,
) -> int:
    """``body()``'s exit status; one of ``errors`` becomes ``error: ...`` and status 1, and
    Ctrl-C prints ``interrupted`` (what to do next) and returns ``interrupted_code``."""
    try:
        return body()
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        return interrupted_code
    except errors as e:
        return fail(e)
