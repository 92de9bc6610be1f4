"""The radioactivity check (Sander et al. 2024, closed-model setting): ask a suspect model,
through its OpenAI-compatible API, prompts of our choosing, and test its answers for Avocado's
watermark. A model distilled from watermarked answers reproduces their green pairs.

The mark sits only where the served model hesitates (the entropy gate), so the check asks
where it hesitated: :func:`choose_prompts` runs the served model itself, unwatermarked, over
many candidate prompts and keeps the ones whose answer has gated positions — the prompts whose
API answers were marked. The choice depends on our model and the prompts, never on a key, so
the suspect's test stays exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from avocado_llm.protect.detect import Answer, EntropyGate
from avocado_llm.teachers.base import SamplingParams
from avocado_llm.teachers.openai_compat import OpenAICompatTeacher
from avocado_llm.world.tasks import FAMILIES, generate

QUERY_SEED = 7919
"""Seed of the tiny-world prompts the check asks (train split: what a distiller asks too)."""


def suspect_prompts(per_family: int, seed: int = QUERY_SEED) -> list[list[dict[str, str]]]:
    """Tiny-world prompts of every family, ``per_family`` each."""
    return [e.messages for e in generate(list(FAMILIES), "train", per_family, seed=seed)]


def choose_prompts(
    gate: EntropyGate,
    candidates: list[list[dict[str, str]]],
    limit: int | None = None,
    max_new_tokens: int = 24,
) -> list[list[dict[str, str]]]:
    """The candidates whose unwatermarked answer (by the served model) has positions at the
    gate, most such positions first (stable), at most ``limit``."""
    counts = gate.hesitations(candidates, max_new_tokens)
    order = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: -counts[i])
    return [candidates[i] for i in order[:limit]]


@dataclass(frozen=True)
class SuspectAnswers:
    model: str
    answers: list[Answer]


def first_model(url: str, api_key: str | None) -> str:
    """The first model the endpoint lists (``GET /models``)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=30)
    r.raise_for_status()
    data = r.json().get("data") or []
    if not data:
        raise ValueError(f"{url}/models lists no model; name one with --model")
    return str(data[0]["id"])


def ask_suspect(
    url: str,
    api_key_env: str | None,
    prompts: list[list[dict[str, str]]],
    model: str | None = None,
    max_tokens: int = 24,
    concurrency: int = 8,
) -> SuspectAnswers:
    """The suspect's greedy answers to ``prompts`` (retries and back-off of the harvest's
    endpoint teacher)."""
    import os

    key = os.environ.get(api_key_env) if api_key_env else None
    name = model or first_model(url, key)
    teacher = OpenAICompatTeacher(
        "suspect",
        url,
        name,
        api_key_env=api_key_env,
        supports_logprobs=False,
        max_concurrency=concurrency,
    )
    params = SamplingParams(temperature=0.0, max_new_tokens=max_tokens, top_logprobs=0)

    async def run() -> list[str]:
        try:
            done = await teacher.generate(prompts, params)
        finally:
            await teacher.aclose()
        return [c[0].text for c in done]

    texts = asyncio.run(run())
    return SuspectAnswers(name, [Answer(t, m) for t, m in zip(texts, prompts, strict=True)])
