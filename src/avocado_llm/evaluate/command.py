"""``avocado eval``: score one model on a recipe's held-out split and regenerate the report.

    avocado eval recipes/tiny.yaml --model zoo/qwen-tiny --n 100
    avocado eval recipes/tiny.yaml --url http://127.0.0.1:8001/v1 --served-model Qwen/Qwen3-1.7B \\
        --api-key-env VLLM_API_KEY --name qwen3-1.7b --role teacher --concurrency 32
    avocado eval recipes/tiny.yaml --model runs/tiny/student --lm-eval avocado,avocado_mc
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

With --lm-eval, lm-evaluation-harness scores the model instead (see docs/evaluation.md): on the
recipe's held-out split as lm-eval tasks over local files (generation and multiple-choice
forms), or on its standard tasks; its scores go to report.json's lm_eval and the report.
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
    p.add_argument(
        "--in-process",
        action="store_true",
        help="score an engine: vllm teacher's weights in this process instead of through its "
        "vLLM server (started for the evaluation, or the one `avocado teachers up` runs)",
    )
    p.add_argument(
        "--lm-eval",
        metavar="TASK[,TASK]",
        help="run lm-evaluation-harness (the eval extra) instead: the recipe's held-out tasks "
        "(avocado, avocado_mc, avocado_<family>[_mc], written as YAML + JSONL to "
        "<out>/lm_eval_tasks) or lm-eval's own (gsm8k, mmlu, ifeval: their data comes from the "
        "hub); scores go to report.json's lm_eval and the report",
    )
    p.add_argument("--limit", type=int, metavar="N", help="documents per lm-eval task [all]")
    p.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="the served model's tokenizer, for loglikelihood (multiple-choice) lm-eval tasks "
        "through --url [the recipe's student/, when --served-model is the recipe's student]",
    )


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
    if args.lm_eval is not None:
        return _run_lm_eval(args, recipe)
    if args.limit is not None or args.tokenizer is not None:
        return cli.fail("--limit and --tokenizer go with --lm-eval", cli.EXIT_USAGE)

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
            n=args.n, out=args.out, device=args.device, in_process=args.in_process,
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


def _run_lm_eval(args: argparse.Namespace, recipe: Recipe) -> int:
    """``avocado eval --lm-eval``: lm-evaluation-harness's scores into the report."""
    from avocado_llm.evaluate.evaluation import ModelSource
    from avocado_llm.evaluate.lm_eval_run import Target, evaluate_lm_eval
    from avocado_llm.evaluate.report import ReportError, lm_eval_rows, write_report
    from avocado_llm.evaluate.runner import EvalError

    tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
    if not tasks:
        return cli.fail("--lm-eval needs task names, e.g. avocado,avocado_mc", cli.EXIT_USAGE)
    tokenizer = args.tokenizer
    if tokenizer is None and args.url is not None and _own_student(recipe, args):
        tokenizer = recipe.run_dir / "student" if (recipe.run_dir / "student").is_dir() else None

    def run() -> int:
        source = ModelSource(args.model, args.url, args.served_model, args.api_key_env,
                             args.concurrency)  # fmt: skip
        target = Target(
            model_dir=args.model, url=args.url, served_model=args.served_model,
            api_key_env=args.api_key_env, tokenizer=tokenizer, concurrency=args.concurrency,
            device="cpu" if args.device == "auto" else args.device,
        )  # fmt: skip
        n = args.n if args.n is not None else recipe.eval.heldout_per_family
        if n < 1:
            raise EvalError(f"examples per family must be at least 1, got {n} (--n)")
        name = args.name or source.default_name()
        done = evaluate_lm_eval(recipe, target, tasks, name=name, n=n, out=args.out,
                                limit=args.limit)  # fmt: skip
        files = write_report(done.eval_dir, {"run_dir": recipe.run_dir})
        for r in lm_eval_rows({"lm_eval": {name: done.entry}}):
            print(f"{r['task']}: {r['metric']} {r['value']} {r['stderr']} (n {r['n']})")
        print(f"report: {files.html} (lm_eval in report.json); tasks: {done.tasks_dir}")
        return 0

    return cli.report_errors(
        run, (EvalError, ReportError), interrupted="interrupted: the report was not changed"
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
