"""``avocado eval``: score one model on a recipe's held-out split and regenerate the report.

    avocado eval recipes/tiny.yaml --model zoo/qwen-tiny --n 100
    avocado eval recipes/tiny.yaml --url http://127.0.0.1:8001/v1 --served-model Qwen/Qwen3-1.7B \\
        --api-key-env VLLM_API_KEY --name qwen3-1.7b --role teacher --concurrency 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from avocado_llm.config import cli
from avocado_llm.evaluate.report import (
    ROLES,
    agreement_lines,
    judged_rows,
    load_report,
    verdicts,
)

if TYPE_CHECKING:
    from avocado_llm.config import Recipe


HELP = "score a model (directory or endpoint) on held-out tasks; write the report"
DESCRIPTION = """\
Score one model on the held-out split of RECIPE's task families and data sources: a local
Hugging Face directory (--model) or a model behind an OpenAI-compatible endpoint (--url),
answering greedily. Its scores are added to (or replace its entry in) <out>/report.json;
report.md, report.html and the plots are regenerated, and its answers are written to
<out>/answers/<name>.jsonl. On sources without a verifier the judge (eval.judge or
eval.judge_url) compares the student's answers with each teacher's, in both orders.
"""


def add_eval_command(commands: Any) -> None:
    """Register ``eval`` on the ``avocado`` parser's subcommands."""
    p = cli.add_command(
        commands, "eval", run_eval_command, HELP, DESCRIPTION, recipe=True, device=True
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, metavar="DIR", help="a local HF model directory")
    source.add_argument("--url", help="an OpenAI-compatible base URL, e.g. http://host:8001/v1")
    p.add_argument("--served-model", metavar="NAME", help="model name sent to --url (required)")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable with --url's key")
    p.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="requests in flight to --url [8]"
    )
    p.add_argument("--name", help="name in the report [the directory's or served model's name]")
    p.add_argument(
        "--role",
        choices=ROLES,
        help="teacher, student or baseline: required unless the model is one of the recipe's "
        "teachers (teacher) or the recipe's own student — its run directory's student/, or "
        "serve.model_name at --url (student)",
    )
    p.add_argument(
        "--n",
        type=int,
        help="examples per family, and per data source unless eval.heldout_per_source is set "
        "[eval.heldout_per_family]",
    )
    p.add_argument("--out", type=Path, help="report directory [<output_dir>/<name>/eval]")


def run_eval_command(args: argparse.Namespace) -> int:
    from avocado_llm.evaluate.evaluation import ModelSource, evaluate_model
    from avocado_llm.evaluate.report import ReportError, write_report
    from avocado_llm.evaluate.runner import EvalError
    from avocado_llm.teachers.base import TeacherError

    if args.model is not None and (args.served_model or args.api_key_env):
        return cli.fail("--served-model and --api-key-env go with --url only", cli.EXIT_USAGE)
    recipe = cli.recipe_from_args(args)
    if recipe is None:
        return cli.EXIT_ERROR

    def evaluate() -> int:
        source = ModelSource(
            path=args.model,
            url=args.url,
            served_model=args.served_model,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
        )
        done = evaluate_model(
            recipe, source, name=args.name, role=args.role or _own_student(recipe, args),
            n=args.n, out=args.out, device=args.device,
        )  # fmt: skip
        files = write_report(done.eval_dir, {"run_dir": recipe.run_dir})
        _print_entry(done.name, done.entry)
        report = load_report(done.eval_dir)
        for line in verdicts(report):
            print(line)
        for r in judged_rows(report):
            print(f"judged {r['source']}: {r['student']} vs {r['model']}: win {r['win']}, "
                  f"tie {r['tie']}, loss {r['loss']} of {r['n']} (judge {r['judge']})")  # fmt: skip
        for line in agreement_lines(report):
            print(line)
        print(f"report: {files.html} (also {files.markdown.name}, report.json); "
              f"answers: {done.answers_path}")  # fmt: skip
        return 0

    return cli.report_errors(
        evaluate,
        (EvalError, TeacherError, ReportError),
        interrupted="interrupted: the report was not changed",
    )


def _own_student(recipe: Recipe, args: argparse.Namespace) -> str | None:
    """``student`` when the model is the recipe's own student: its run directory's
    ``student/``, or the name the recipe serves it under (``serve.model_name``) at --url."""
    if args.model is not None:
        mine = args.model.resolve() == (recipe.run_dir / "student").resolve()
    else:
        mine = args.served_model == recipe.serve.model_name
    return "student" if mine else None


def _print_entry(name: str, entry: dict[str, Any]) -> None:
    params = f"{entry['params']:,} params" if entry["params"] is not None else "endpoint"
    table = Table(title=f"{name} ({entry['role']}, {params}) — held-out accuracy")
    for col in ("family", "accuracy", "95% CI", "n", "tok/s"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for family, s in entry["families"].items():
        lo, hi = s["ci95"]
        table.add_row(family, f"{s['accuracy']:.1%}", f"{lo:.1%}–{hi:.1%}", str(s["n"]),
                      f"{s['tokens_per_s']:,.0f}")  # fmt: skip
    table.add_row("overall", f"{entry['overall']:.1%}", "", "", "", style="bold")
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
