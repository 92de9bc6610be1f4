"""``avocado run RECIPE``: zoo → harvest → fuse → distill → evaluate, skipping what is done.

Every stage is resumable on its own (the harvest skips finished records, training resumes from
its latest checkpoint), and a stage whose output is already complete is skipped, so a second
run of the same recipe reuses the harvest and checkpoints and finishes quickly.

"Complete" means made by the same recipe fields from the same inputs: every output records a
fingerprint of them (:mod:`avocado_llm.config.fingerprint`). The harvest's record keys name the
teacher revision (its weight, config, tokenizer and template files), prompt and sampling; a
fused file, a student and an evaluation that were made otherwise are never reused: fusion and
evaluation are redone with a note of what changed, and a trained student is refused with that
list (retraining deletes its checkpoints) unless ``--force``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from avocado_llm.config import Recipe
from avocado_llm.config.cli import EXIT_ERROR, add_command, recipe_from_args, report_errors
from avocado_llm.config.fingerprint import StaleError, changes, summary

console = Console(stderr=True)


def _stage(name: str) -> None:
    console.rule(f"[bold]{name}")


def ensure_zoo(recipe: Recipe) -> None:
    from avocado_llm.teachers import teacher_path
    from avocado_llm.zoo import ZOO, build_teacher

    for t in recipe.teachers:
        path = teacher_path(t, recipe)
        if not t.zoo or (path / "config.json").exists():
            continue
        if t.name not in ZOO:
            raise ValueError(f"teachers: {t.name!r} is marked zoo but the zoo has {list(ZOO)}")
        console.print(f"building zoo teacher {t.name} → {path}")
        build_teacher(ZOO[t.name], path, seed=recipe.seed)


def harvest_on_demand(
    recipe: Recipe, device: str = "auto", servers: Any = None, **kwargs: Any
) -> Any:
    """The harvest, with the vLLM servers of ``engine: vllm`` teachers started when a teacher is
    first asked (a harvest that is done starts none) and stopped when it ends, however it ends
    (:func:`~avocado_llm.teachers.vllm_server.on_demand`), unless ``servers`` (an open
    :class:`~avocado_llm.teachers.vllm_server.OnDemandServers`) outlives it. ``kwargs`` go to
    ``harvest``."""
    from avocado_llm.harvest import harvest
    from avocado_llm.teachers import harvest_teachers
    from avocado_llm.teachers.vllm_server import on_demand

    async def ask(servers: Any) -> Any:
        teachers = await asyncio.to_thread(harvest_teachers, recipe, servers, device)
        try:
            return await harvest(recipe, teachers=teachers, device=device, **kwargs)
        finally:
            for teacher in teachers:
                await teacher.aclose()

    if servers is not None:
        return asyncio.run(ask(servers))
    with on_demand(recipe, note=console.print) as own:
        return asyncio.run(ask(own))


def distill_stage(
    recipe: Recipe, strategy: str, out: Path, use_kd: bool = True, force: bool = False
) -> Path:
    """Reuse a student trained with the same settings and examples; refuse one trained with
    others (retraining deletes its checkpoints: that takes ``force``); resume checkpoints."""
    from avocado_llm.distill.pipeline import (
        default_paths,
        distill,
        distill_fingerprint,
        has_checkpoints,
        trained_fingerprint,
    )

    fused = default_paths(recipe, strategy, out).fused
    if (out / "avocado.json").exists():
        diff = changes(
            trained_fingerprint(out), distill_fingerprint(recipe, strategy, use_kd, fused)
        )
        if not diff:
            console.print(f"student {out}: already trained (same settings and examples)")
            return out
        if not force:
            raise StaleError(
                f"student {out} was trained with other settings or inputs:{summary(diff)}\n"
                "Rerun with --force to train it again (its checkpoints are deleted), or give "
                "this recipe another name"
            )
        console.print(f"student {out}: training again (--force), it changed:{summary(diff)}")
    # A training that was stopped resumes, even one stopped before its first checkpoint was
    # complete (no latest.json yet: it starts from step 0 over the partial folder).
    resume = not force and has_checkpoints(out)
    console.print(f"distilling ({strategy}{'' if use_kd else ', SFT only'}) → {out}")
    return distill(recipe, strategy=strategy, out=out, resume=resume, use_kd=use_kd, force=force)


def drop_stale_baselines(eval_dir: Path, models: dict[str, tuple[Path, str]]) -> None:
    """Drop from the report the baselines the recipe no longer asks for (their scores would sit
    beside the new ones); teachers and students stay (`avocado eval` may add others)."""
    from avocado_llm.evaluate.report import drop_models, load_report

    if not (eval_dir / "report.json").exists():
        return
    done = load_report(eval_dir)["models"]
    gone = [n for n, e in done.items() if e.get("role") == "baseline" and n not in models]
    if gone:
        console.print(f"eval: dropping {', '.join(gone)} (no longer in eval.baselines)")
        drop_models(eval_dir, gone)


def eval_stage(recipe: Recipe, models: dict[str, tuple[Path, str]], device: str) -> dict:
    """Evaluate every model whose report entry was made from other weights or settings."""
    from avocado_llm.evaluate.report import load_report, write_report

    eval_dir = recipe.run_dir / "eval"
    drop_stale_baselines(eval_dir, models)
    evaluate_stale(recipe, models, device)
    write_report(eval_dir, {"run_dir": recipe.run_dir, "harvest_dir": recipe.harvest_dir})
    return load_report(eval_dir)


def evaluate_stale(
    recipe: Recipe, models: dict[str, tuple[Path, str]], device: str, servers: Any = None
) -> None:
    """Evaluate those of ``models`` whose report entry is missing or was made otherwise
    (``engine: vllm`` teachers through ``servers``, when given)."""
    from avocado_llm.evaluate.evaluation import ModelSource, eval_fingerprint, evaluate_model
    from avocado_llm.evaluate.report import load_report

    eval_dir = recipe.run_dir / "eval"
    done = load_report(eval_dir)["models"] if (eval_dir / "report.json").exists() else {}
    n = recipe.eval.heldout_per_family
    for name, (path, role) in models.items():
        source = ModelSource(path=path)
        entry = done.get(name)
        if entry is not None:
            diff = changes(entry.get("fingerprint"), eval_fingerprint(recipe, source, n))
            if entry.get("role") != role:
                diff.append(f"role: {entry.get('role')} → {role}")
            if not diff:
                console.print(f"eval {name}: up to date")
                continue
            console.print(f"eval {name}: evaluating again, it changed:{summary(diff)}")
        evaluate_model(recipe, source, name=name, role=role, device=device, servers=servers)


def run(recipe: Recipe, device: str = "auto", force: bool = False) -> dict:
    from avocado_llm.fusion import fuse_recipe, strategy_slug
    from avocado_llm.teachers import teacher_path
    from avocado_llm.world.checks import check_families

    check_families(recipe)  # before the zoo build: an unknown family fails at once
    t0 = time.monotonic()
    _stage("1/5 zoo")
    ensure_zoo(recipe)
    _stage("2/5 harvest")
    if recipe.harvest.from_run is None:
        from avocado_llm.teachers.vllm_server import on_demand, vllm_configs

        with on_demand(recipe, note=console.print) as servers:
            summary = harvest_on_demand(recipe, device=device, servers=servers)
            if not summary.ok:
                raise RuntimeError("the harvest has failed records; rerun to retry them")
            # The vLLM teachers are evaluated now, while their servers are up: starting them
            # again after the students would cost minutes, and their scores need no student.
            served = {t.name: (teacher_path(t, recipe), "teacher") for t in vllm_configs(recipe)}
            if served:
                console.print(f"evaluating {', '.join(served)} through vLLM")
                evaluate_stale(recipe, served, device, servers)
    elif not (recipe.harvest_dir / "manifest.json").exists():
        raise RuntimeError(
            f"no harvest at {recipe.harvest_dir} to reuse (harvest.from_run): "
            f"run the recipe of run {recipe.harvest.from_run!r} first"
        )
    else:
        console.print(f"harvest: reusing {recipe.harvest_dir}")
    _stage("3/5 fuse")
    strategies = [recipe.fusion.strategy, *recipe.eval.baselines]
    for s in dict.fromkeys(s for s in strategies if s != "sft"):
        fused = fuse_recipe(recipe, s, device=device, reuse=True, note=console.print)
        if fused.report is not None:
            console.print(f"fusion {s}: {fused.examples} examples, wins {fused.report.wins}")
    _stage("4/5 distill")
    student = distill_stage(recipe, recipe.fusion.strategy, recipe.run_dir / "student", force=force)
    models = {t.name: (teacher_path(t, recipe), "teacher") for t in recipe.teachers}
    models["student"] = (student, "student")
    for b in recipe.eval.baselines:
        out = recipe.run_dir / "baselines" / strategy_slug(b)
        if b == "sft":  # the default fusion without token-level KD
            path = distill_stage(recipe, recipe.fusion.strategy, out, use_kd=False, force=force)
        else:
            path = distill_stage(recipe, b, out, force=force)
        models[f"baseline-{strategy_slug(b)}"] = (path, "baseline")
    _stage("5/5 evaluate")
    report = eval_stage(recipe, models, device)
    print_summary(report, time.monotonic() - t0)
    return report


def print_summary(report: dict, seconds: float) -> None:
    models = report["models"]
    families = sorted({f for m in models.values() for f in m["families"]})
    table = Table(title=f"Held-out exact match (finished in {seconds:.0f} s)")
    for col in ("model", "role", "params", *families, "overall"):
        table.add_column(col, justify="left" if col in ("model", "role") else "right")
    for name, m in sorted(models.items(), key=lambda kv: (kv[1]["role"], kv[0])):
        table.add_row(
            name,
            m["role"],
            f"{m['params']:,}" if m.get("params") else "—",
            *(
                f"{m['families'][f]['accuracy']:.1%}" if f in m["families"] else "—"
                for f in families
            ),
            f"{m['overall']:.1%}",
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


HELP = "the whole loop: zoo → harvest → fuse → distill → evaluate (skips what is done)"
DESCRIPTION = """\
Run every stage of RECIPE, skipping finished work: a second run reuses the harvest, fusion and
trained students and only re-evaluates what changed.
"""


def add_run_command(commands: Any) -> None:
    p = add_command(commands, "run", run_command, HELP, DESCRIPTION, recipe=True, device=True)
    p.add_argument(
        "--force",
        action="store_true",
        help="retrain a student whose settings or examples changed (deleting its checkpoints) "
        "instead of stopping with the list of changes",
    )


def run_command(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR

    def run_all() -> int:
        run(recipe, device=args.device, force=args.force)
        return 0

    return report_errors(
        run_all,
        (RuntimeError, ValueError, FileNotFoundError),
        interrupted="interrupted: run the same command to continue where it stopped",
    )
