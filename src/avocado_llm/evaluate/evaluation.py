"""One model's evaluation on a recipe's held-out split, merged into the run's report.

``avocado eval`` calls :func:`evaluate_model`: it draws the held-out examples of the recipe's
families, scores a local model directory or an endpoint (:mod:`avocado_llm.evaluate.runner`),
adds or replaces the model's entry in ``report.json`` and writes its answers, one JSON line per
example, to ``answers/<name>.jsonl``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avocado_llm.config import Recipe, RecipeError, TeacherConfig
from avocado_llm.data.prompts import iter_prompts
from avocado_llm.data.sources import DataError, source_digest
from avocado_llm.data.verifiers import verifier, versions
from avocado_llm.evaluate.judged import judge_answers
from avocado_llm.evaluate.report import ROLES, update_report, write_answers
from avocado_llm.evaluate.runner import (
    EvalError,
    EvalResult,
    SourcePrompt,
    evaluate_endpoint,
    evaluate_examples,
    load_local,
)
from avocado_llm.teachers import teacher_path
from avocado_llm.teachers.hf import weights_revision
from avocado_llm.teachers.openai_compat import OpenAICompatTeacher
from avocado_llm.world import tasks
from avocado_llm.world.checks import check_families
from avocado_llm.world.corpus import count_params
from avocado_llm.world.tasks import Example

NAME_PATTERN = r"[A-Za-z0-9_.-]+"
"""Model names in reports: they also name ``answers/<name>.jsonl``."""


@dataclass(frozen=True)
class ModelSource:
    """What to evaluate: a local model directory, or a model served behind an endpoint."""

    path: Path | None = None
    url: str | None = None
    """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8001/v1``."""
    served_model: str | None = None
    """The model name sent with each request to ``url``."""
    api_key_env: str | None = None
    """Environment variable that holds the endpoint's key (never the key itself)."""
    concurrency: int = 8
    """Requests in flight at once to ``url``."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise EvalError("evaluate either a model directory or an endpoint URL (not both)")
        if self.url is not None and not self.served_model:
            raise EvalError(f"name the model served at {self.url} (--served-model)")
        if self.concurrency < 1:
            raise EvalError(f"concurrency must be at least 1, got {self.concurrency}")

    def default_name(self) -> str:
        raw = self.path.resolve().name if self.path is not None else str(self.served_model)
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-") or "model"

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.url}#{self.served_model}"


@dataclass(frozen=True)
class ModelEvaluation:
    """What :func:`evaluate_model` wrote: the model's report entry and its answers file."""

    name: str
    entry: dict[str, Any]
    eval_dir: Path
    answers_path: Path


def evaluate_model(
    recipe: Recipe,
    source: ModelSource,
    *,
    name: str | None = None,
    role: str | None = None,
    n: int | None = None,
    out: Path | None = None,
    device: str = "auto",
    in_process: bool = False,
    servers: Any = None,
) -> ModelEvaluation:
    """Score ``source`` on ``n`` held-out examples per recipe family (default
    ``eval.heldout_per_family``); add or replace its entry in ``out/report.json`` (default
    ``run_dir/eval``) and write its answers to ``out/answers/<name>.jsonl``.

    A recipe teacher with ``engine: vllm`` is scored through its vLLM server, the engine that
    answered its harvest (``servers``, an
    :class:`~avocado_llm.teachers.vllm_server.OnDemandServers` already open, else one started
    for this evaluation and stopped after it), unless ``in_process``: then its weights are
    loaded here.

    ``name`` defaults to the recipe teacher's name when ``source`` is one of the recipe's
    teachers (its zoo directory, or its served model), else to the directory's or served model's
    name; ``role`` then defaults to ``teacher``. Any other model needs a role."""
    teacher = _recipe_teacher(recipe, source)
    name = name or teacher or source.default_name()
    if not re.fullmatch(NAME_PATTERN, name):
        raise EvalError(f"bad model name {name!r}: use letters, digits, _ . - (--name)")
    if role is None and name in {t.name for t in recipe.teachers}:
        role = "teacher"
    if role not in ROLES:
        raise EvalError(f"role of {name!r} is {role!r}; pass --role {'|'.join(ROLES)}")
    per_family = n if n is not None else recipe.eval.heldout_per_family
    if per_family < 1:
        raise EvalError(f"examples per family must be at least 1, got {per_family} (--n)")
    try:  # evaluation reads data.sources: a recipe of sources only is fine here
        check_families(recipe, stage=not recipe.data.sources)
    except RecipeError as error:
        raise EvalError(str(error)) from None
    examples: list[Example | SourcePrompt] = []
    examples += tasks.generate(recipe.world.families, "heldout", per_family, recipe.seed)
    served = None if in_process else served_teacher_config(recipe, source)
    fingerprint = eval_fingerprint(recipe, source, per_family, in_process)  # before: files change
    examples += source_prompts(recipe, per_source(recipe, per_family))
    if served is not None:
        result, params = _score_served(recipe, served, examples, name, servers)
    else:
        result, params = _score(recipe, source, examples, name, device)
    entry = result.entry(role, params) | {
        "source": source.describe() + (f" (vLLM, {served.vllm.dtype})" if served else ""),
        "n_per_family": per_family,
        "seed": recipe.seed,
        "max_new_tokens": recipe.eval.max_new_tokens,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
    }
    if recipe.data.sources:
        entry["n_per_source"] = per_source(recipe, per_family)
        entry["open_sources"] = [s.name for s in recipe.data.sources if s.verifier == "none"]
    eval_dir = out if out is not None else recipe.run_dir / "eval"
    answers_path = eval_dir / "answers" / f"{name}.jsonl"
    rows = [
        dict(id=ex.id, family=ex.family, prompt=ex.prompt, gold=ex.answer, answer=a, correct=ok)
        for ex, (_, a, ok) in zip(examples, result.answers, strict=True)
    ]
    for ex, row in zip(examples, rows, strict=True):
        if isinstance(ex, SourcePrompt):  # the whole chat, for the judge
            row["messages"] = ex.messages
    write_answers(answers_path, rows)
    if any(s.verifier == "none" for s in recipe.data.sources):
        # Before the entry: a judge that fails leaves the model unevaluated, so the next run
        # evaluates (and judges) it again instead of finding it up to date.
        judge_answers(recipe, eval_dir, name, role, device)
    update_report(eval_dir, name, entry, recipe=recipe.name)
    return ModelEvaluation(name, entry, eval_dir, answers_path)


def per_source(recipe: Recipe, per_family: int) -> int:
    """Held-out prompts scored per data source: ``eval.heldout_per_source``, else the count
    per family (``--n``, else ``eval.heldout_per_family``)."""
    count = recipe.eval.heldout_per_source or per_family
    if count < 1:
        raise EvalError(f"examples per source must be at least 1, got {count}")
    return count


def source_prompts(recipe: Recipe, cap: int) -> list[SourcePrompt]:
    """The first ``cap`` held-out prompts of every data source (streamed: a big source is
    read through, never held), each with its source's verifier (None for ``none``)."""
    if not recipe.data.sources:
        return []
    counts: dict[str, int] = {}
    prompts = []
    checks = {s.name: verifier(s.verifier) for s in recipe.data.sources}
    try:
        for row in iter_prompts(recipe.data.sources, "heldout"):
            if counts.get(row.source, 0) >= cap:
                continue
            counts[row.source] = counts.get(row.source, 0) + 1
            check = checks[row.source] if row.reference is not None else None
            prompts.append(SourcePrompt(row.id, row.source, row.messages, row.reference, check))
    except DataError as error:
        raise EvalError(str(error)) from None
    return prompts


def eval_fingerprint(
    recipe: Recipe, source: ModelSource, per_family: int, in_process: bool = False
) -> dict[str, Any]:
    """What makes a model's scores: the model (a local directory: the digest of its weight,
    config, tokenizer and template files; an endpoint: its URL and model name; a teacher scored
    through its vLLM server: its harvest revision, which names the engine and dtype), the
    examples (families, count, seed) and the answer length."""
    served = None if in_process else served_teacher_config(recipe, source)
    if served is not None:
        from avocado_llm.teachers.vllm_server import served_info

        model = served_info(served, recipe).revision
    elif source.path is not None:
        model = weights_revision(source.path)
    else:
        model = source.describe()
    fingerprint: dict[str, Any] = {
        "input:model": model,
        "seed": recipe.seed,
        "world.families": list(recipe.world.families),
        "n_per_family": per_family,
        "eval.max_new_tokens": recipe.eval.max_new_tokens,
    }
    if recipe.data.sources:  # only then: a tiny-world recipe keeps its fingerprint
        fingerprint["n_per_source"] = per_source(recipe, per_family)
        for s in recipe.data.sources:
            fingerprint[f"input:source:{s.name}"] = source_digest(s.path)
            fingerprint[f"data.sources.{s.name}"] = {
                k: getattr(s, k) if k != "path" else str(s.path)
                for k in ("path", "messages", "prompt", "system", "reference", "verifier",
                          "heldout_fraction", "limit", "on_error", "max_prompt_tokens")
            } | ({"split_by": s.split_by} if s.split_by else {})  # fmt: skip
        fingerprint |= versions(s.verifier for s in recipe.data.sources)  # scores made again
        if any(s.verifier == "none" for s in recipe.data.sources):  # what judges them
            judge = recipe.eval.judge_url or recipe.eval.judge or recipe.fusion.judge_teacher
            fingerprint["eval.judge"] = {
                "judge": judge or recipe.teachers[0].name,
                "model": recipe.eval.judge_model,
                "rubric": recipe.eval.judge_rubric,
            }
    templated = _templated_teacher(recipe, source)
    if templated is not None:  # how the teacher is asked is part of its scores
        fingerprint["prompt_template"] = dataclasses.asdict(templated.prompt_template)
    return fingerprint


def served_teacher_config(recipe: Recipe, source: ModelSource) -> TeacherConfig | None:
    """The recipe's ``engine: vllm`` teacher that ``source`` (a model directory) is, if any."""
    name = _recipe_teacher(recipe, source)
    for t in recipe.teachers:
        if t.name == name and t.kind == "local" and t.engine == "vllm":
            return t
    return None


def _recipe_teacher(recipe: Recipe, source: ModelSource) -> str | None:
    """The name of the recipe's teacher that ``source`` is, if it is one."""
    for t in recipe.teachers:
        if source.path is not None and t.kind == "local":
            if source.path.resolve() == teacher_path(t, recipe).resolve():
                return t.name
        elif source.url is not None and t.kind == "openai" and t.model == source.served_model:
            return t.name
    return None


def _templated_teacher(recipe: Recipe, source: ModelSource) -> Any:
    """The recipe's local teacher that ``source`` is, when it has a ``prompt_template``."""
    name = _recipe_teacher(recipe, source)
    for t in recipe.teachers:
        if t.name == name and t.kind == "local" and t.prompt_template is not None:
            return t
    return None


def _score_served(
    recipe: Recipe,
    cfg: TeacherConfig,
    examples: list[Example | SourcePrompt],
    name: str,
    servers: Any,
) -> tuple[EvalResult, int | None]:
    """Greedy answers of an ``engine: vllm`` teacher through its server (asked as the harvest
    asked it: its chat or prompt template, its stop strings), ``max_concurrency`` at a time."""
    from avocado_llm.teachers.vllm_server import OnDemandTeacher, ServerError, on_demand

    what, chunk = f"eval {name} (vLLM)", max(64, 4 * cfg.max_concurrency)

    async def ask(open_servers: Any) -> EvalResult:
        teacher: Any = OnDemandTeacher(cfg, recipe, open_servers)
        return await evaluate_endpoint(teacher, examples, recipe.eval.max_new_tokens, chunk, what)

    try:
        if servers is not None:
            result = asyncio.run(ask(servers))
        else:
            with on_demand(recipe, note=lambda line: print(line, file=sys.stderr)) as own:
                result = asyncio.run(ask(own))
    except ServerError as error:
        raise EvalError(
            f"{error}\n(or score the teacher's weights in this process: avocado eval --in-process)"
        ) from None
    return result, count_params(teacher_path(cfg, recipe))


def _score(
    recipe: Recipe,
    source: ModelSource,
    examples: list[Example | SourcePrompt],
    name: str,
    device: str,
) -> tuple[EvalResult, int | None]:
    """Greedy answers of ``source`` scored, and its parameter count (``None`` for endpoints:
    an endpoint does not say how big its model is)."""
    max_new, what = recipe.eval.max_new_tokens, f"eval {name}"
    templated = _templated_teacher(recipe, source)
    if templated is not None and source.path is not None:
        # A base model's prompt template is how it is asked (the harvest asked it so): the
        # in-process teacher renders it and cuts at its stop strings, as vLLM does.
        from avocado_llm.teachers import load_teacher

        teacher = load_teacher(templated, recipe, device, in_process=True)
        chunk = max(64, recipe.eval.batch_size)
        result = asyncio.run(evaluate_endpoint(teacher, examples, max_new, chunk, what))
        return result, count_params(source.path)
    if source.path is not None:
        model, tokenizer = load_local(source.path, device)
        params = count_params(source.path) or sum(p.numel() for p in model.parameters())
        batch = recipe.eval.batch_size
        return evaluate_examples(model, tokenizer, examples, batch, max_new, what), params
    endpoint = OpenAICompatTeacher(
        name,
        str(source.url),
        str(source.served_model),
        api_key_env=source.api_key_env,
        max_concurrency=source.concurrency,
        supports_logprobs=False,
        max_retries=recipe.harvest.max_retries,
        timeout_s=recipe.harvest.request_timeout_s,
    )
    chunk = max(64, 4 * source.concurrency)  # a few rounds of requests per progress update
    return asyncio.run(evaluate_endpoint(endpoint, examples, max_new, chunk, what)), None
