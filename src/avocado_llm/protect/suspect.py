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
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from avocado_llm.config import SourceConfig
from avocado_llm.data.prompts import iter_prompts
from avocado_llm.data.sources import DataError, Reader, open_source
from avocado_llm.protect.detect import Answer, EntropyGate
from avocado_llm.teachers.base import SamplingParams
from avocado_llm.teachers.openai_compat import OpenAICompatTeacher
from avocado_llm.world.tasks import FAMILIES, generate

if TYPE_CHECKING:
    from avocado_llm.config import Recipe

Messages = list[dict[str, str]]

QUERY_SEED = 7919
"""Seed of the tiny-world prompts the check asks (train split: what a distiller asks too)."""


def suspect_prompts(per_family: int, seed: int = QUERY_SEED) -> list[list[dict[str, str]]]:
    """Tiny-world prompts of every family, ``per_family`` each."""
    return [e.messages for e in generate(list(FAMILIES), "train", per_family, seed=seed)]


def source_prompts(sources: list[SourceConfig]) -> list[Messages]:
    """Every prompt of ``sources``, held-out and training alike, each once, in file order."""
    seen: set[str] = set()
    out: list[Messages] = []
    for split in ("train", "heldout"):
        for row in iter_prompts(sources, split):
            if row.id not in seen:
                seen.add(row.id)
                out.append(row.messages)
    return out


def file_source(path: Path, column: str | None = None) -> SourceConfig:
    """A prompt file (JSONL, JSON, CSV/TSV, Parquet or a ``datasets`` directory) as a source
    with no held-out split: its ``column``, else its ``messages`` column (chats), else its
    ``prompt`` column (text). Raises ``DataError`` naming the columns it has."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    reader = open_source(path)
    columns = reader.columns
    if columns is None:  # JSON: each row its own keys; the first readable row says
        first = next((r.values for r in reader.records() if r.values is not None), None)
        columns = list(first) if first else []
    wanted = [column] if column else ["messages", "prompt"]
    found = next((c for c in wanted if c in columns), None)
    if found is None:
        has = ", ".join(columns) if columns else "no readable row"
        need = f"a {column!r} column" if column else "a `messages` (chat) or `prompt` (text) column"
        raise DataError(f"{path}: needs {need}; it has {has} (choose one with --prompt-column)")
    chat = found == "messages" or (column is not None and _holds_chats(reader, found))
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem) or "prompts"
    return SourceConfig(
        name=name,
        path=path,
        messages=found if chat else None,
        prompt=None if chat else found,
        heldout_fraction=0.0,
    )


def _holds_chats(reader: Reader, column: str) -> bool:
    """Whether ``column``'s first value is a chat (a list) rather than a text."""
    for record in reader.records():
        if record.values is not None:
            return isinstance(record.values.get(column), list)
    return False


def recipe_prompts(recipe: Recipe, per_family: int) -> list[Messages]:
    """A recipe's own prompts: every prompt of its ``data.sources`` (both splits) and
    ``per_family`` training prompts of each of its tiny-world families."""
    prompts = source_prompts(list(recipe.data.sources))
    if recipe.world.families and per_family > 0:
        examples = generate(list(recipe.world.families), "train", per_family, seed=QUERY_SEED)
        prompts += [e.messages for e in examples]
    return prompts


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
