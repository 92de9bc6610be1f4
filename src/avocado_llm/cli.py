"""``avocado <command>``: the one entry point.

Commands (``avocado <command> --help`` describes each):

- ``zoo build`` / ``zoo list``: the tiny world's teacher zoo;
- ``tasks``: show examples of the task families;
- ``recipe check`` / ``recipe explain``: validate a recipe, or print the reference of every field;
- ``data check``: read a recipe's own prompt sources (rows, splits, duplicates, bad rows);
- ``harvest``: ask every teacher of a recipe its prompts and keep the answers (resumable);
- ``fuse``: choose, per harvested prompt, the answer to learn and from which teachers;
- ``distill``: train the student on the fused answers (SFT + cross-tokenizer KD);
- ``eval``: score a model (directory or endpoint) on held-out tasks and write the report;
- ``run``: the whole loop, skipping what is done;
- ``admin``: the billing ledger (accounts, credits, keys, prices, usage, statements);
- ``serve``: the model behind an OpenAI-compatible API that only paying keys can call;
- ``demo``: serve a recipe's student and sell it one call, end to end.
- ``watermark detect`` / ``watermark suspect``: find Avocado's keyed watermark in text or a model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from avocado_llm.config.cli import EXIT_ERROR, add_command, fail, recipe_from_args, report_errors

DEFAULT_ZOO = Path("zoo")


def _zoo_build(args: argparse.Namespace) -> int:
    from avocado_llm.zoo import ZOO, build_teacher

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = args.only or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        print(f"error: unknown teacher(s) {unknown}; the zoo has {list(ZOO)}", file=sys.stderr)
        return 2
    for name in names:
        out = args.out / name
        console = Console(stderr=True)
        console.print(f"[bold]building {name}[/] → {out}")
        result = build_teacher(
            ZOO[name], out, seed=args.seed, heldout_per_family=args.heldout, steps=args.steps
        )
        scores = ", ".join(f"{f} {s.accuracy:.0%}" for f, s in result.families.items())
        console.print(f"  held-out accuracy: {scores}")
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    from avocado_llm.zoo import ZOO_FILE, describe_teacher, evaluate_teacher

    dirs = (
        sorted(p for p in args.dir.iterdir() if (p / "config.json").exists())
        if args.dir.is_dir()
        else []
    )
    if not dirs:
        print(
            f"error: no teachers in {args.dir}/; build them with "
            f"`avocado zoo build --out {args.dir}`",
            file=sys.stderr,
        )
        return 1
    rows = []
    for path in dirs:
        row = describe_teacher(path)
        if args.evaluate or not (path / ZOO_FILE).exists():
            result = evaluate_teacher(path, args.heldout)
            row["accuracy"] = {f: round(s.accuracy, 4) for f, s in result.families.items()}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    families = sorted({f for r in rows for f in r["accuracy"]})  # type: ignore[union-attr]
    table = Table(title=f"Teacher zoo ({args.dir}) — held-out exact match")
    for col in ("teacher", "architecture", "params", "tokenizer", "template", *families):
        table.add_column(col, justify="right" if col in families or col == "params" else "left")
    for r in rows:
        tok = r["tokenizer"]
        acc = r["accuracy"]
        table.add_row(
            str(r["name"]),
            str(r["architecture"]),
            f"{r['params']:,}",
            f"{tok['type']} ({tok['vocab_size']})",  # type: ignore[index]
            str(r["chat_template"]),
            *(f"{acc[f]:.0%}" if f in acc else "—" for f in families),  # type: ignore[operator,index]
        )
    _console().print(table)
    return 0


def _console() -> Console:
    """Wide enough for the tables when the output is a pipe or a file, not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _tasks(args: argparse.Namespace) -> int:
    from avocado_llm.world.tasks import FAMILIES, get_family

    names = args.family or list(FAMILIES)
    try:
        families = [get_family(n) for n in names]
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.format == "jsonl":  # one example a line, for other tools (lm-eval, TRL, datasets)
        for family in families:
            for ex in family.generate(args.split, args.n, args.seed):
                row = {"id": ex.id, "family": ex.family, "split": ex.split,
                       "messages": ex.messages, "answer": ex.answer}  # fmt: skip
                print(json.dumps(row, ensure_ascii=False))
        return 0
    table = Table(title=f"{args.split} examples (seed {args.seed})")
    for col in ("family", "prompt", "answer"):
        table.add_column(col)
    for family in families:
        for ex in family.generate(args.split, args.n, args.seed):
            table.add_row(family.name, ex.prompt, ex.answer)
    _console().print(table)
    return 0


def _recipe_check(args: argparse.Namespace) -> int:
    from avocado_llm.config import RecipeError
    from avocado_llm.world.checks import check_families

    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR
    try:  # the schema holds names; the world knows which families exist
        check_families(recipe, str(args.recipe), stage=False)
    except RecipeError as error:
        print(error, file=sys.stderr)
        return EXIT_ERROR
    families = ", ".join(recipe.world.families) or "none"
    sources = ", ".join(s.name for s in recipe.data.sources) or "none"
    print(f"{args.recipe}: ok — run {recipe.name!r}, {len(recipe.teachers)} teachers, "
          f"families {families}, data sources {sources}")  # fmt: skip
    return 0


def _recipe_explain(args: argparse.Namespace) -> int:
    from avocado_llm.config import Recipe, describe

    print(describe(Recipe))
    return 0


def _harvest(args: argparse.Namespace) -> int:
    from avocado_llm.harvest import HarvestError
    from avocado_llm.teachers import TeacherError

    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR
    out = args.out if args.out is not None else recipe.harvest_dir
    if args.status:
        return _harvest_status(out)

    def run_harvest() -> int:
        from avocado_llm.run import harvest_on_demand  # engine: vllm servers, started when asked

        summary = harvest_on_demand(recipe, args.device, out_dir=args.out, limit=args.limit)
        table = Table(title=f"Harvest {recipe.name!r} → {out}")
        for col in ("teacher", "records", "already done", "new", "failed", "tokens", "tok/s"):
            table.add_column(col, justify="left" if col == "teacher" else "right")
        for t in summary.teachers:
            tps = t.completion_tokens / t.seconds if t.seconds else 0.0
            table.add_row(t.name, f"{t.planned:,}", f"{t.skipped:,}", f"{t.written:,}",
                          f"{t.failed:,}", f"{t.completion_tokens:,}", f"{tps:,.0f}")  # fmt: skip
        _console().print(table)
        if not summary.ok:
            print(f"{summary.failed} records failed (reasons in {out / 'failures.jsonl'}); "
                  "run the same command again to retry them", file=sys.stderr)  # fmt: skip
            return EXIT_ERROR
        return 0

    return report_errors(
        run_harvest,
        (HarvestError, TeacherError),
        interrupted=f"interrupted: what was written is kept in {out}; run the same command "
        "to resume",
    )


def _harvest_status(out: Path) -> int:
    from avocado_llm.harvest import HarvestError, status

    try:
        teachers = status(out)
    except HarvestError as e:
        return fail(e)
    table = Table(title=f"Harvest in {out}")
    for col in ("teacher", "records", "prompts", "failed", "tokens", "finish reasons"):
        table.add_column(col, justify="left" if col in ("teacher", "finish reasons") else "right")
    for name, t in teachers.items():
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(t.finish_reasons.items()))
        table.add_row(name, f"{t.records:,}", f"{t.prompts:,}", f"{t.failed:,}",
                      f"{t.completion_tokens:,}", reasons or "—")  # fmt: skip
    _console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avocado",
        description="Build one flagship LLM out of several teachers: "
        "harvest → fuse → distill → evaluate → serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    zoo = commands.add_parser("zoo", help="the tiny world's teacher zoo (build, list)")
    zoo_cmds = zoo.add_subparsers(dest="zoo_command", required=True, metavar="<zoo command>")
    build = zoo_cmds.add_parser(
        "build",
        help="train the three tiny teachers from scratch (deterministic for a seed)",
        description="Train gemma-tiny, gpt-oss-tiny and qwen-tiny from scratch and save them "
        "as Hugging Face model directories, with their held-out accuracy in zoo.json.",
    )
    build.add_argument("--out", type=Path, default=DEFAULT_ZOO, help="output directory [zoo]")
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these teachers")
    build.add_argument("--seed", type=int, default=0, help="random seed [0]")
    build.add_argument("--steps", type=int, default=None, help="override training steps")
    build.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 is much faster on a machine shared with other busy processes)",
    )
    build.add_argument(
        "--heldout", type=int, default=300, help="held-out examples per family to score [300]"
    )
    build.set_defaults(func=_zoo_build)

    lst = zoo_cmds.add_parser(
        "list",
        help="architecture, size, tokenizer, template and accuracy of each teacher",
        description="Per teacher: architecture, parameter count, tokenizer type and vocabulary "
        "size, chat-template family and held-out accuracy per family.",
    )
    lst.add_argument("--dir", type=Path, default=DEFAULT_ZOO, help="zoo directory [zoo]")
    lst.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    lst.add_argument(
        "--evaluate", action="store_true", help="re-measure accuracy instead of reading zoo.json"
    )
    lst.add_argument("--heldout", type=int, default=300, help="examples per family with --evaluate")
    lst.set_defaults(func=_zoo_list)

    tasks = commands.add_parser(
        "tasks",
        help="show examples of the tiny world's task families (a table, or JSON lines)",
        description="Print generated prompts and gold answers of the task families: a table, "
        "or with --format jsonl one JSON object a line (id, family, split, messages, answer) "
        "for other tools. Train and held-out examples never share an instance (or an id).",
    )
    tasks.add_argument("family", nargs="*", help="families to show [all]")
    tasks.add_argument("--split", choices=("train", "heldout"), default="train")
    tasks.add_argument("-n", type=int, default=3, help="examples per family [3]")
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument(
        "--format", choices=("table", "jsonl"), default="table", help="output format [table]"
    )
    tasks.set_defaults(func=_tasks)

    recipe = commands.add_parser("recipe", help="check a recipe, or explain every recipe field")
    recipe_cmds = recipe.add_subparsers(dest="recipe_command", required=True, metavar="<cmd>")
    add_command(
        recipe_cmds,
        "check",
        _recipe_check,
        recipe=True,
        help="load a recipe and report every problem at once",
        description="Validate RECIPE (types, unknown keys, values, files) and print all problems.",
    )
    explain = recipe_cmds.add_parser(
        "explain", help="print every recipe field with its type, default and meaning"
    )
    explain.set_defaults(func=_recipe_explain)

    harvest = add_command(
        commands,
        "harvest",
        _harvest,
        recipe=True,
        help="ask every teacher the recipe's prompts; keep text, top-k log-probs, provenance",
        description="Ask every teacher of RECIPE its training prompts and write the answers "
        "(text, top-k log-probabilities, provenance) as Parquet shards with a manifest. "
        "Rerunning resumes: records already written are skipped, failed ones are retried.",
    )
    harvest.add_argument(
        "--out", type=Path, default=None, help="harvest directory [<output_dir>/<name>/harvest]"
    )
    harvest.add_argument(
        "--limit", type=int, default=None, metavar="N",
        help="only the first N prompts (families interleaved), for quick runs",
    )  # fmt: skip
    harvest.add_argument(
        "--status", action="store_true", help="print what the harvest directory holds and exit"
    )
    harvest.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps for local teachers [auto]"
    )

    from avocado_llm.data.command import add_data_command

    add_data_command(commands)

    from avocado_llm.fusion.command import add_fuse_command

    add_fuse_command(commands)

    from avocado_llm.distill.command import add_distill_command

    add_distill_command(commands)

    from avocado_llm.evaluate.command import add_eval_command

    add_eval_command(commands)

    from avocado_llm.run import add_run_command

    add_run_command(commands)

    from avocado_llm.models.command import add_models_command

    add_models_command(commands)

    from avocado_llm.teachers.command import add_teachers_command

    add_teachers_command(commands)

    from avocado_llm.billing.command import add_admin_command

    add_admin_command(commands)

    from avocado_llm.serve.command import add_serve_command

    add_serve_command(commands)

    from avocado_llm.demo import add_demo_command

    add_demo_command(commands)

    from avocado_llm.protect.command import add_watermark_command

    add_watermark_command(commands)
    return parser


EXIT_CLOSED_PIPE = 141
"""The exit status when the reader of our output went away (``avocado ... | head``): a shell's
for a process ended by SIGPIPE (128 + 13), as ``yes | head`` ends."""


def main(argv: list[str] | None = None) -> int:
    # Our own progress bars say what happens; the per-file bars of model loading are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    was_devnull = _stdout_is_devnull()
    try:
        args = build_parser().parse_args(argv)
        code = int(args.func(args) or 0)
        if sys.stdout is not None:  # (None when started with stdout closed)
            sys.stdout.flush()  # a reader gone away shows here, not in a message at exit
        return code
    except BrokenPipeError:
        # Quietly, as CLI tools do: no traceback, and nothing left to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except SystemExit as e:
        # rich's consoles end a closed pipe themselves (stdout → /dev/null, then exit 1)
        if e.code == 1 and not was_devnull and _stdout_is_devnull():
            return EXIT_CLOSED_PIPE
        raise


def _stdout_is_devnull() -> bool:
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


if __name__ == "__main__":
    raise SystemExit(main())
