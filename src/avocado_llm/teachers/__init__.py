"""Teachers: local checkpoints (``hf``), OpenAI-compatible endpoints (``openai_compat``) and
local checkpoints served by vLLM (``vllm_server``), behind one protocol (``base``).
:func:`load_teacher` builds one from a recipe entry."""

from __future__ import annotations

from pathlib import Path

from avocado_llm.config import HarvestConfig, Recipe, TeacherConfig
from avocado_llm.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
)

__all__ = [
    "Completion",
    "SamplingParams",
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "TokenLogprobs",
    "endpoint_teacher",
    "harvest_teachers",
    "load_teacher",
    "sampling_params",
]


def sampling_params(harvest: HarvestConfig, seed: int) -> SamplingParams:
    return SamplingParams(
        temperature=harvest.temperature,
        top_p=harvest.top_p,
        max_new_tokens=harvest.max_new_tokens,
        n=harvest.samples_per_prompt,
        top_logprobs=harvest.top_logprobs,
        seed=seed,
    )


def teacher_path(cfg: TeacherConfig, recipe: Recipe) -> Path:
    """Where a local teacher's weights are: its ``path``, or ``world.zoo_dir/<name>``."""
    return cfg.path if cfg.path is not None else recipe.world.zoo_dir / cfg.name


def endpoint_teacher(
    cfg: TeacherConfig, recipe: Recipe, base_url: str, model: str, api_key_env: str | None = None
) -> Teacher:
    """An OpenAI-compatible endpoint asked as recipe teacher ``cfg`` (its name, licence,
    concurrency, logprobs, reasoning and prompt template; the harvest's retries and timeout)."""
    from avocado_llm.teachers.openai_compat import OpenAICompatTeacher

    return OpenAICompatTeacher(
        name=cfg.name,
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        licence=cfg.licence,
        max_concurrency=cfg.max_concurrency,
        supports_logprobs=cfg.supports_logprobs,
        keep_reasoning=cfg.keep_reasoning,
        max_n=cfg.max_n,
        max_retries=recipe.harvest.max_retries,
        timeout_s=recipe.harvest.request_timeout_s,
        prompt_template=cfg.prompt_template,
    )


def load_teacher(
    cfg: TeacherConfig, recipe: Recipe, device: str = "auto", in_process: bool = False
) -> Teacher:
    """The teacher a recipe entry describes (local weights are loaded now; an ``engine: vllm``
    teacher is its running server's endpoint: :mod:`~avocado_llm.teachers.vllm_server`, unless
    ``in_process``, for callers that score answers with the weights themselves)."""
    if cfg.kind == "local" and cfg.engine == "vllm" and not in_process:
        from avocado_llm.teachers.vllm_server import served_teacher

        return served_teacher(cfg, recipe)
    if cfg.kind == "openai":
        return endpoint_teacher(cfg, recipe, str(cfg.base_url), str(cfg.model), cfg.api_key_env)
    from avocado_llm.teachers.hf import LocalTeacher

    return LocalTeacher(
        cfg.name,
        teacher_path(cfg, recipe),
        licence=cfg.licence,
        gguf_file=cfg.gguf_file,
        chat_template=cfg.chat_template,
        device=device,
        batch_size=recipe.harvest.batch_size,
        prompt_template=cfg.prompt_template,
    )


def harvest_teachers(recipe: Recipe, servers: object | None, device: str = "auto") -> list[Teacher]:
    """Every teacher of ``recipe`` for a harvest: ``engine: vllm`` ones as
    :class:`~avocado_llm.teachers.vllm_server.OnDemandTeacher` of ``servers`` (an
    :class:`~avocado_llm.teachers.vllm_server.OnDemandServers`: a server starts when its teacher
    is first asked), the others loaded now."""
    from avocado_llm.teachers.vllm_server import OnDemandServers, OnDemandTeacher

    teachers: list[Teacher] = []
    for cfg in recipe.teachers:
        if cfg.kind == "local" and cfg.engine == "vllm" and isinstance(servers, OnDemandServers):
            teachers.append(OnDemandTeacher(cfg, recipe, servers))  # type: ignore[arg-type]
        else:
            teachers.append(load_teacher(cfg, recipe, device))
    return teachers
