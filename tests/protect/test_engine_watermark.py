"""The watermark inside the real batching engine: greedy and sampled answers carry their
account's watermark, rows of different accounts in one batch each get their own, and answers
without a watermark are not flagged (calibration on the engine's own text)."""

from __future__ import annotations

import asyncio

import pytest
from watermark_helpers import SECRET, ask

from avocado_llm.protect.detect import Detector, EntropyGate
from avocado_llm.protect.scheme import Watermark, WatermarkParams, account_key
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.world.tasks import FAMILIES, generate

# qwen-tiny is a confident model (few positions with entropy), so the mechanism is tested at a
# strength that flips most positions; the default scheme is measured by bench/radioactivity.py.
PARAMS = WatermarkParams(gamma=0.25, context=1, min_entropy=0.0)
STRONG = 10.0
KEY_A, KEY_B = account_key(SECRET, 1), account_key(SECRET, 2)
PROMPTS = [e.messages for e in generate(list(FAMILIES), "heldout", 40, seed=3)]


def detector(engine: LocalEngine, params: WatermarkParams = PARAMS) -> Detector:
    gate = None
    if params.min_entropy > 0:
        gate = EntropyGate(engine.hf_model, engine.tokenizer, params.min_entropy)
    return Detector(engine.tokenizer, params, gate)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_watermarked_answers_are_detected(engine: LocalEngine, temperature: float) -> None:
    mark = Watermark(KEY_A, delta=STRONG, params=PARAMS)
    answers = asyncio.run(ask(engine, PROMPTS, [mark] * len(PROMPTS), temperature))
    det = detector(engine)
    mine, other = det.score(answers, KEY_A), det.score(answers, KEY_B)
    assert mine.scored >= 100
    assert mine.p_value < 1e-6, mine
    assert other.p_value > 1e-3, other
    # the same prompts without the watermark are not flagged under either key
    plain = asyncio.run(ask(engine, PROMPTS, [None] * len(PROMPTS), temperature))
    assert det.score(plain, KEY_A).p_value > 1e-3


async def ask_with(
    engine: LocalEngine, marks: list[Watermark | None], temperature: float, top_p: float
) -> list[str]:
    """``ask`` with a ``top_p``: one request per prompt, all at once (they share batches)."""
    await engine.start()

    async def collect(i: int, mark: Watermark | None) -> str:
        options = SamplingOptions(
            max_tokens=24, temperature=temperature, top_p=top_p, seed=i, watermark=mark
        )
        gen = engine.generate([engine.chat_prompt(PROMPTS[i])], options)
        return "".join([d.text async for d in gen])

    return list(await asyncio.gather(*[collect(i, m) for i, m in enumerate(marks)]))


@pytest.mark.parametrize(
    ("temperature", "top_p"),
    [(1.0, 1e-9), (1.0, 0.2), (1e-6, 1.0), (0.01, 1.0), (2.0, 0.5)],
    ids=["tiny-top-p", "small-top-p", "tiny-temperature", "cold", "hot-nucleus"],
)
def test_no_sampling_parameter_removes_the_watermark(
    engine: LocalEngine, temperature: float, top_p: float
) -> None:
    """Issue #18: the nucleus is the watermarked distribution's and a cold row is drawn from
    the biased logits, so a tiny ``top_p`` or temperature gives the watermarked argmax (it
    used to give the model's own, unmarked one: p ≈ 0.5). On the GPU too (``make test-gpu``
    runs this file on CUDA: the tensor sampler and the Triton watermark)."""
    mark = Watermark(KEY_A, delta=STRONG, params=PARAMS)
    answers = asyncio.run(ask_with(engine, [mark] * len(PROMPTS), temperature, top_p))
    det = detector(engine)
    mine = det.score(answers, KEY_A)
    assert mine.scored >= 100
    assert mine.p_value < 1e-6, mine
    assert det.score(answers, KEY_B).p_value > 1e-3


def test_entropy_gated_watermark_is_detected_from_prompts(engine: LocalEngine) -> None:
    params = WatermarkParams(gamma=0.5, context=2, min_entropy=0.5)
    mark = Watermark(KEY_A, delta=STRONG, params=params)
    answers = asyncio.run(ask(engine, PROMPTS, [mark] * len(PROMPTS)))
    det = detector(engine, params)
    gated = det.score(answers, KEY_A, PROMPTS)
    assert gated.p_value < 1e-6, gated
    assert gated.scored < det.score(answers, KEY_A).scored  # only the gated positions
    assert det.score(answers, KEY_B, PROMPTS).p_value > 1e-3


def test_each_row_of_a_batch_gets_its_own_account_watermark(engine: LocalEngine) -> None:
    marks = [
        Watermark(KEY_A if i % 2 == 0 else KEY_B, delta=STRONG, params=PARAMS)
        for i in range(len(PROMPTS))
    ]
    before = len(engine.batch_sizes)
    answers = asyncio.run(ask(engine, PROMPTS, marks))
    assert max(list(engine.batch_sizes)[before:]) > 1  # rows of both accounts shared batches
    det = detector(engine)
    a_texts, b_texts = answers[0::2], answers[1::2]
    assert det.score(a_texts, KEY_A).p_value < 1e-4
    assert det.score(b_texts, KEY_B).p_value < 1e-4
    attribution = det.by_account(b_texts, SECRET, [1, 2, 3, 4])
    assert attribution.best.account == 2
    assert attribution.corrected_p < 1e-3


def test_engine_answers_without_watermark_are_calibrated(engine: LocalEngine) -> None:
    """500 unwatermarked samples (50 groups of the engine's sampled answers × 10 accounts):
    the false-positive rate at p < 0.01 is at most 2%."""
    prompts = [e.messages for e in generate(list(FAMILIES), "train", 50, seed=11)][:300]
    answers = asyncio.run(ask(engine, prompts, [None] * len(prompts), temperature=1.0))
    det = detector(engine)
    p_values = []
    for g in range(50):
        group = answers[g * 6 : (g + 1) * 6]
        attribution = det.by_account(group, SECRET, list(range(1, 11)))
        p_values += [s.score.p_value for s in attribution.scores]
    assert len(p_values) == 500
    assert sum(p < 0.01 for p in p_values) / len(p_values) <= 0.02
