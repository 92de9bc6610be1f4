"""What the tiny world's tokenizers learn from, and the size of a model directory, for the stages
(the student's tokenizer, the report's parameter counts) without the zoo build above them."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open

from avocado_llm.world import tasks


def world_corpus(seed: int = 0, per_family: int = 1500) -> list[str]:
    """The text every tiny-world tokenizer is trained on: prompts and answers, all families."""
    lines: list[str] = []
    for family in tasks.FAMILIES.values():
        for ex in family.generate("train", per_family, seed):
            lines += [ex.prompt, ex.answer, f"The answer is {ex.answer}."]
    return lines


def count_params(path: Path) -> int:
    """Parameter count from the safetensors headers (no weights loaded)."""
    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return total
