"""The reference test of a suspect (``protect.reference``): replaying the first change each key's
watermark makes to our model's greedy answers, and testing whether a suspect repeats them.

The replay must be exact: the engine's watermarked answers follow every change the table
predicts for their key. A suspect that is our watermarked API under one account is flagged for
that account at the Monte Carlo resolution; unwatermarked answers follow no key's changes; and
answers watermarked under an unrelated key do not implicate the account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from watermark_helpers import MODEL, ask

from avocado_llm.protect.detect import Detector, EntropyGate
from avocado_llm.protect.reference import FlipTable, flip_table, key_scores, reference_test
from avocado_llm.protect.scheme import Watermark, WatermarkParams
from avocado_llm.protect.suspect import choose_prompts, suspect_prompts
from avocado_llm.serve.local_engine import LocalEngine

PARAMS = WatermarkParams(min_entropy=0.3)  # the zoo's qwen-tiny is sure of most tokens
DELTA = 3.0
ACCOUNT, OTHER = 123_456_789, 987_654_321


@pytest.fixture(scope="module")
def setup(zoo_dir: Path, engine: LocalEngine) -> tuple[FlipTable, list, Detector, LocalEngine]:
    gate = EntropyGate.from_model_dir(zoo_dir / MODEL, PARAMS.min_entropy)
    prompts = choose_prompts(gate, suspect_prompts(40))
    table = flip_table(gate, prompts, DELTA, PARAMS)
    return table, prompts, Detector(gate.tokenizer, PARAMS, gate), engine


def answers(setup: tuple, key: int | None) -> list[list[int]]:
    _, prompts, detector, engine = setup
    mark = Watermark(key, DELTA, PARAMS) if key is not None else None
    texts = asyncio.run(ask(engine, prompts, [mark] * len(prompts)))
    return [detector.token_ids(t) for t in texts]


def test_the_engine_makes_exactly_the_changes_the_table_replays(setup: tuple) -> None:
    table = setup[0]
    [score] = key_scores(table, answers(setup, ACCOUNT), [ACCOUNT])
    assert score.flipped >= 10, f"too few changed answers to test ({score.flipped})"
    assert score.followed >= score.flipped - 1  # batch numerics may move one logit across
    # the unwatermarked answers take our top token everywhere: they follow no change
    [plain] = key_scores(table, answers(setup, None), [ACCOUNT])
    assert plain.flipped == score.flipped and plain.followed == 0


def test_our_api_under_one_account_is_flagged_for_it_and_no_other(setup: tuple) -> None:
    table = setup[0]
    result = reference_test(table, answers(setup, ACCOUNT), [ACCOUNT, OTHER], random_keys=500)
    assert result.p_values[0] == pytest.approx(1 / 501)  # at the resolution: no random key ties
    assert result.p_values[1] > 0.01
    assert result.account_scores[0].rate > 0.9 > result.null_rate


def test_answers_under_unrelated_keys_do_not_implicate_the_account(setup: tuple) -> None:
    table = setup[0]
    for other in (11, 22, 33):
        result = reference_test(table, answers(setup, other), [ACCOUNT], random_keys=200)
        assert result.p_values[0] > 0.005, other  # one in 200 by chance: none of three
