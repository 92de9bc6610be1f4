"""The suspect check asks where the served model hesitates: `EntropyGate.hesitations` counts the
gated positions of the model's own unwatermarked answer, and `choose_prompts` keeps the prompts
that have any, most first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from watermark_helpers import MODEL, ask

from avocado_llm.protect.detect import Detector, EntropyGate
from avocado_llm.protect.suspect import choose_prompts, suspect_prompts
from avocado_llm.serve.local_engine import LocalEngine

GATE = 0.3  # the zoo's qwen-tiny is sure of most answers; 0.3 nats opens on some of them


def test_hesitations_are_the_gated_positions_of_the_models_own_answers(
    zoo_dir: Path, engine: LocalEngine
) -> None:
    gate = EntropyGate.from_model_dir(zoo_dir / MODEL, GATE)
    prompts = suspect_prompts(12)
    counts = gate.hesitations(prompts)
    assert len(counts) == len(prompts)
    # the same model's greedy answers through the serving engine, scored as the detector does
    answers = asyncio.run(ask(engine, prompts, [None] * len(prompts)))
    detector = Detector(gate.tokenizer, gate=gate)
    keep = gate.keep(prompts, [detector.token_ids(a) for a in answers])
    agree = sum(c == sum(k) for c, k in zip(counts, keep, strict=True))
    assert agree >= len(prompts) - 2  # batch numerics may move an entropy across the gate
    assert 0 < sum(c > 0 for c in counts) < len(prompts)  # it hesitates on some, not all


def test_choose_prompts_keeps_the_hesitant_ones_most_first(zoo_dir: Path) -> None:
    gate = EntropyGate.from_model_dir(zoo_dir / MODEL, GATE)
    prompts = suspect_prompts(12)
    counts = gate.hesitations(prompts)
    chosen = choose_prompts(gate, prompts)
    expected = sorted((i for i, c in enumerate(counts) if c), key=lambda i: -counts[i])
    assert chosen == [prompts[i] for i in expected]
    assert choose_prompts(gate, prompts, limit=2) == chosen[:2]
    # a gate no position reaches chooses nothing
    assert choose_prompts(EntropyGate(gate.model, gate.tokenizer, 50.0), prompts) == []
