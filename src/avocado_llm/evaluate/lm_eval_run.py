"""``avocado eval --lm-eval``: lm-evaluation-harness (the ``eval`` extra, pinned) against a
model directory or a served URL, its scores merged into ``report.json`` under ``lm_eval``.

- A model directory runs in this process through lm-eval's ``hf`` model (transformers), with
  the model's chat template.
- A URL (an OpenAI-compatible server: ``avocado serve``, vLLM) runs generation tasks through
  ``local-chat-completions`` (the server applies its chat template) and loglikelihood tasks
  (multiple choice) through ``local-completions``, which sends token ids with ``echo`` and
  ``logprobs`` and so needs the served model's tokenizer (``--tokenizer``) and, behind
  ``avocado serve``, a key whose plan allows log-probabilities. The key is read from the
  environment variable named by ``--api-key-env`` (never a flag).

Tasks are lm-eval names: the recipe's own (written by :mod:`.lm_eval_writer`: ``avocado``,
``avocado_mc``, ``avocado_<family>``, ``avocado_<family>_mc``) or lm-eval's standard ones
(``gsm8k``, ``mmlu``, ``ifeval``: these download their data from the Hugging Face hub).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avocado_llm.evaluate.lm_eval_writer import Row, TaskSet, world_rows, write_tasks
from avocado_llm.evaluate.report import update_lm_eval
from avocado_llm.evaluate.runner import EvalError

if TYPE_CHECKING:
    from avocado_llm.config import Recipe

VERSION = "0.4.13"
"""The lm-evaluation-harness release the ``eval`` extra pins."""
LOGLIKELIHOOD = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")


@dataclass(frozen=True)
class Target:
    """What lm-eval evaluates: a model directory, or a model served at ``url``."""

    model_dir: Path | None = None
    url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    tokenizer: Path | None = None
    """The served model's tokenizer (a directory): loglikelihood tasks through a URL."""
    concurrency: int = 1
    device: str = "cpu"

    def describe(self) -> str:
        return (
            str(self.model_dir) if self.model_dir is not None else f"{self.url}#{self.served_model}"
        )


@dataclass(frozen=True)
class LmEvalRun:
    """What :func:`evaluate_lm_eval` did: the model's entry, where the tasks and report are."""

    name: str
    entry: dict[str, Any]
    tasks_dir: Path
    eval_dir: Path


def evaluate_lm_eval(
    recipe: Recipe,
    target: Target,
    tasks: list[str],
    *,
    name: str,
    n: int,
    out: Path | None = None,
    limit: int | None = None,
) -> LmEvalRun:
    """Write the recipe's tasks (``n`` held-out prompts per family and source) under
    ``<out>/lm_eval_tasks``, run ``tasks`` on ``target`` and merge the scores into
    ``<out>/report.json`` (``out`` defaults to the run's ``eval/``)."""
    eval_dir = out if out is not None else recipe.run_dir / "eval"
    written = write_tasks(eval_dir / "lm_eval_tasks", recipe_rows(recipe, n), recipe.seed)
    entry = run_lm_eval(target, tasks, written, limit)
    entry["n_per_family"] = n
    update_lm_eval(eval_dir, name, entry, recipe=recipe.name)
    return LmEvalRun(name, entry, written.directory, eval_dir)


def recipe_rows(recipe: Recipe, n: int) -> dict[str, list[Row]]:
    """The held-out prompts ``avocado eval`` scores: ``n`` per tiny-world family, and per data
    source (``eval.heldout_per_source`` when set) those with a reference answer and a verifier
    (a chat source's last user turn is the prompt: an lm-eval document is one text)."""
    from avocado_llm.evaluate.evaluation import per_source, source_prompts

    groups = world_rows(list(recipe.world.families), n, recipe.seed)
    specs = {s.name: s.verifier for s in recipe.data.sources}
    for p in source_prompts(recipe, per_source(recipe, n)) if recipe.data.sources else []:
        if p.answer is not None and p.verify is not None:
            groups.setdefault(p.family, []).append(Row(p.id, p.prompt, p.answer, specs[p.family]))
    return groups


def run_lm_eval(
    target: Target, tasks: list[str], written: TaskSet, limit: int | None = None
) -> dict[str, Any]:
    """Run ``tasks`` (``avocado`` / ``avocado_mc`` expanded) and return the report entry:
    ``{"tasks": {TASK: {"metrics": {...}, "stderr": {...}, "n": N, "output_type": ...}},
    "source", "lm_eval_version", "limit", "evaluated_at"}``."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError(
            "lm-evaluation-harness is not installed: pip install 'avocado-llm[eval]' "
            f"(lm-eval[api]=={VERSION})"
        ) from None
    names = written.expand(tasks)
    if not names:
        raise EvalError("no lm-eval tasks to run (--lm-eval TASK[,TASK])")
    standard = [t for t in names if written.output_type(t) is None]
    # lm-eval's own thousands of task files take ~30 s to index: only when one is asked for
    manager = TaskManager(include_path=str(written.directory), include_defaults=bool(standard))
    unknown = [t for t in standard if t not in manager.all_tasks]
    if unknown:
        raise EvalError(
            f"unknown lm-eval task(s): {', '.join(unknown)}; this recipe's are "
            f"{', '.join(written.generation + written.multiple_choice)} (or avocado, avocado_mc), "
            "and lm-eval lists its own with `lm_eval ls tasks`"
        )
    results: dict[str, Any] = {}
    for model, model_args, batch in _plans(target, names, written, manager):
        with _api_key(target.api_key_env):
            out = lm_eval.simple_evaluate(
                model=model,
                model_args=model_args,
                tasks=batch,
                task_manager=manager,
                apply_chat_template=True,
                limit=limit,
                log_samples=False,
                bootstrap_iters=1000,  # mean metrics: closed-form stderr, no resampling
            )
        if out is None:
            raise EvalError("lm-eval returned no results")
        results |= _scores(out, written)
    return {
        "tasks": results,
        "source": target.describe(),
        "lm_eval_version": getattr(lm_eval, "__version__", VERSION),
        "limit": limit,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _plans(
    target: Target, names: list[str], written: TaskSet, manager: Any
) -> Iterator[tuple[str, dict[str, Any], list[str]]]:
    """(lm-eval model, its arguments, tasks) for each run: one for a directory; through a URL,
    one per API (chat completions for generation, completions for loglikelihood)."""
    if target.model_dir is not None:
        args = {"pretrained": str(target.model_dir), "device": target.device, "dtype": "float32"}
        yield "hf", args, names
        return
    base = str(target.url).rstrip("/")
    scored = [t for t in names if _output_type(t, written, manager) in LOGLIKELIHOOD]
    generated = [t for t in names if t not in scored]
    common = {"model": target.served_model, "num_concurrent": target.concurrency,
              "max_retries": 3}  # fmt: skip
    if generated:
        yield (
            "local-chat-completions",
            {**common, "base_url": f"{base}/chat/completions"},
            generated,
        )
    if scored:
        if target.tokenizer is None:
            raise EvalError(
                f"{', '.join(scored)} score log-likelihoods: through a URL that needs the served "
                "model's tokenizer (--tokenizer DIR) and a key whose plan allows log-probabilities"
            )
        args = {**common, "base_url": f"{base}/completions", "tokenizer": str(target.tokenizer),
                "tokenizer_backend": "huggingface", "tokenized_requests": True}  # fmt: skip
        context = _context_length(target.tokenizer)
        if context is not None:
            args["max_length"] = context
        yield "local-completions", args, scored


def _output_type(task: str, written: TaskSet, manager: Any) -> str:
    """A task's output type: ours from the writer; any other's from its loaded tasks (a group
    with a loglikelihood task among its tasks is scored through completions)."""
    known = written.output_type(task)
    if known is not None:
        return known
    leaves = manager.load([task])["tasks"].values()
    kinds = [str(getattr(t, "OUTPUT_TYPE", None) or t.config.output_type) for t in leaves]
    return next((k for k in kinds if k in LOGLIKELIHOOD), "generate_until")


def _context_length(tokenizer: Path) -> int | None:
    """The model's context from its ``config.json`` beside the tokenizer, if there is one."""
    try:
        config = json.loads((tokenizer / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 1 else None


@contextlib.contextmanager
def _api_key(env: str | None) -> Iterator[None]:
    """lm-eval's API models read ``OPENAI_API_KEY``: set it from ``env`` for the run."""
    if env is None:
        yield
        return
    key = os.environ.get(env)
    if not key:
        raise EvalError(f"the environment variable {env} (--api-key-env) is not set")
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old


def _scores(out: dict[str, Any], written: TaskSet) -> dict[str, Any]:
    """``{TASK: {"metrics", "stderr", "n", "output_type"}}`` from lm-eval's results."""
    scores = {}
    samples = out.get("n-samples", {})
    for task, values in out.get("results", {}).items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            metric, _, _filter = key.partition(",")
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if metric == "sample_len":  # lm-eval's count of documents, not a score
                continue
            if metric.endswith("_stderr"):
                stderr[metric[: -len("_stderr")]] = float(value)
            else:
                metrics[metric] = float(value)
        n = samples.get(task, {}).get("effective")
        scores[task] = {
            "metrics": metrics,
            "stderr": stderr,
            "n": n if isinstance(n, int) else None,
            "output_type": written.output_type(task)
            or out.get("configs", {}).get(task, {}).get("output_type"),
        }
    return scores
