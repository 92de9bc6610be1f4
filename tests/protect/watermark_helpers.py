"""Helpers of the watermark tests (a module of its own: every test directory has a conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from avocado_llm.protect.scheme import Watermark
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine

MODEL = "qwen-tiny"
SECRET = "test-watermark-secret"


async def ask(
    engine: LocalEngine,
    conversations: Sequence[list[dict[str, str]]],
    marks: Sequence[Watermark | None],
    temperature: float = 0.0,
    max_tokens: int = 24,
) -> list[str]:
    """One request per conversation, all submitted at once (so they share batches)."""
    await engine.start()

    async def collect(gen: object) -> str:
        return "".join([d.text async for d in gen])  # type: ignore[attr-defined]

    gens = []
    for i, (messages, mark) in enumerate(zip(conversations, marks, strict=True)):
        options = SamplingOptions(
            max_tokens=max_tokens, temperature=temperature, seed=i, watermark=mark
        )
        gens.append(engine.generate([engine.chat_prompt(messages)], options))
    return list(await asyncio.gather(*[collect(g) for g in gens]))
