"""The scheme's arithmetic: exact p-values, per-account keys, green lists the engine and the
detector agree on, and calibration on text that carries no watermark."""

from __future__ import annotations

import math
import random

import pytest
import torch

from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import (
    DEFAULT_DELTA,
    DEFAULT_PARAMS,
    START,
    Watermark,
    WatermarkParams,
    account_key,
    binomial_tail,
    contexts,
    distinct_pairs,
    gate_entropy,
    green_mask,
    is_green,
    score_pairs,
)

PARAMS = WatermarkParams(gamma=0.25, context=1)


def test_binomial_tail_is_exact() -> None:
    for n in (1, 5, 20):
        for p in (0.25, 0.5):
            for k in range(n + 2):
                brute = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
                assert math.isclose(binomial_tail(k, n, p), min(brute, 1.0), rel_tol=1e-9)
    # far in the tail, where a normal approximation is off by orders of magnitude
    exact = binomial_tail(150, 200, 0.25)
    assert 0 < exact < 1e-40
    assert math.isclose(exact, sum(math.comb(200, i) * 0.25**i * 0.75 ** (200 - i)
                                   for i in range(150, 201)), rel_tol=1e-9)  # fmt: skip


def test_keys_differ_per_account_and_secret() -> None:
    keys = {account_key("secret", a) for a in range(1000)}
    assert len(keys) == 1000
    assert account_key("secret", 1) == account_key("secret", 1)
    assert account_key("secret", 1) != account_key("other secret", 1)
    assert all(0 <= k < 2**31 for k in keys)


def test_green_lists_have_gamma_share_and_match_the_detector() -> None:
    keys = torch.tensor([account_key("s", a) for a in range(8)])
    ctx = torch.tensor([[START], [5], [17], [5], [300], [1], [2], [3]])
    mask = green_mask(keys, ctx, 4096, 0.25)
    assert abs(mask.float().mean().item() - 0.25) < 0.01
    for row in range(8):
        for tok in (0, 7, 4095):
            assert bool(mask[row, tok]) == is_green(int(keys[row]), ctx[row].tolist(), tok, PARAMS)
    # another key, another list
    assert (mask[1] != mask[3]).any()


def test_engine_state_biases_each_row_with_its_own_key() -> None:
    marks = [
        Watermark(account_key("s", 1), 2.0, PARAMS),
        None,
        Watermark(account_key("s", 2), 4.0, PARAMS),
    ]
    state = WatermarkState.for_rows(marks, torch.device("cpu"))
    assert state is not None
    logits = torch.zeros(3, 64)
    out = state.apply(logits.clone())  # apply biases in place
    assert torch.equal(out[1], logits[1])  # no watermark: untouched
    for row, mark in ((0, marks[0]), (2, marks[2])):
        assert mark is not None
        for tok in range(64):
            green = is_green(mark.key, [START], tok, PARAMS)
            assert out[row, tok].item() == (mark.delta if green else 0.0)
    state.advance(torch.tensor([7, 8, 9]))
    state.select(torch.tensor([0, 2]))
    out = state.apply(torch.zeros(2, 64))
    for row, (mark, prev) in enumerate(((marks[0], 7), (marks[2], 9))):
        assert mark is not None
        for tok in range(64):
            assert (out[row, tok].item() > 0) == is_green(mark.key, [prev], tok, PARAMS)
    assert WatermarkState.for_rows([None, Watermark(1, 0.0)], torch.device("cpu")) is None


def test_distinct_pairs_drop_repeats() -> None:
    answers = [[5, 6, 7], [5, 6, 7], [5, 6, 8]]
    pairs = distinct_pairs(answers, PARAMS)
    assert pairs == [((START,), 5), ((5,), 6), ((6,), 7), ((6,), 8)]
    assert contexts([1, 2, 3], 2) == [(START, START), (START, 1), (1, 2)]
    keep = [[True, False, True], [True, True, True], [False, False, False]]
    assert distinct_pairs(answers, PARAMS, keep) == [((START,), 5), ((6,), 7), ((5,), 6)]


def test_calibrated_on_unwatermarked_token_streams() -> None:
    """500 texts that no key watermarked: at most 2% get p < 0.01 (the test is exact, so
    about 1% or fewer), and about 5% or fewer get p < 0.05."""
    rng = random.Random(0)
    p_values = []
    for i in range(500):
        ids = [rng.randrange(512) for _ in range(60)]
        pairs = distinct_pairs([ids], PARAMS)
        [score] = score_pairs(pairs, [account_key("s", i % 50)], PARAMS)
        p_values.append(score.p_value)
    assert sum(p < 0.01 for p in p_values) / 500 <= 0.02
    assert sum(p < 0.05 for p in p_values) / 500 <= 0.08
    assert 0.35 < sum(p_values) / 500 < 0.7  # roughly uniform, not piled at 0 or 1


def test_entropy_gate_leaves_confident_positions_alone() -> None:
    params = DEFAULT_PARAMS
    marks = [Watermark(account_key("s", 1), 1.0, params)] * 2
    state = WatermarkState.for_rows(marks, torch.device("cpu"))
    assert state is not None
    logits = torch.zeros(2, 64)
    logits[0, 3] = 20.0  # a sure model: entropy ~0
    out = state.apply(logits.clone())  # apply biases in place
    assert torch.equal(out[0], logits[0])
    green = [is_green(marks[1].key, [START] * params.context, t, params) for t in range(64)]
    assert out[1].tolist() == [1.0 if g else 0.0 for g in green]


def full_bias(logits: torch.Tensor, marks: list[Watermark], ctx: torch.Tensor) -> torch.Tensor:
    """The textbook watermark: every green token of the vocabulary raised by delta."""
    keys = torch.tensor([m.key for m in marks])
    green = green_mask(keys, ctx, logits.shape[-1], marks[0].params.gamma)
    return logits + green.float() * torch.tensor([m.delta for m in marks])[:, None]


def test_engine_step_equals_the_full_green_list_bias() -> None:
    """The engine hashes only the tokens that can be picked; greedy choices are exactly those
    of biasing the whole vocabulary, and sampled rows get the bias on every token within reach."""
    params = WatermarkParams(gamma=0.5, context=2, min_entropy=0.0)
    marks = [Watermark(account_key("s", a), 1.5, params) for a in range(16)]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3000, generator=gen) * 3
    for temperature in (0.0, 1.0):
        state = WatermarkState.for_rows(marks, torch.device("cpu"), [temperature] * 16)
        assert state is not None
        state.advance(torch.randint(3000, (16,), generator=gen))
        state.advance(torch.randint(3000, (16,), generator=gen))
        reference = full_bias(logits, marks, state.context)
        out = state.apply(logits.clone())  # apply biases in place
        assert torch.equal(out.argmax(-1), reference.argmax(-1))
        if temperature > 0:  # within 12 nats (+ delta) of the top: the full bias; else none
            reach = logits >= logits.max(-1, keepdim=True).values - (12.0 + 1.5)
            assert torch.equal(out[reach], reference[reach])
            assert torch.equal(out[~reach], logits[~reach])
            assert reach.float().mean() > 0.5


def test_default_gate_opens_on_a_two_way_hesitation_only() -> None:
    """The default gate (0.8 nats): a position split three ways (1.1 nats) is biased, one where
    the top token has 90% (0.33 nats) is not."""
    assert math.log(1 / 0.9) < DEFAULT_PARAMS.min_entropy < math.log(3)
    marks = [Watermark(account_key("s", 1), DEFAULT_DELTA, DEFAULT_PARAMS)] * 2
    state = WatermarkState.for_rows(marks, torch.device("cpu"))
    assert state is not None
    logits = torch.full((2, 64), -30.0)
    logits[0, 3] = logits[0, 4] = logits[0, 5] = 0.0  # three-way: ln 3 ≈ 1.1 nats
    logits[1, 3], logits[1, 4] = 2.2, 0.0  # 90/10: 0.33 nats, below the gate
    out = state.apply(logits.clone())  # apply biases in place
    assert torch.equal(out[1], logits[1])
    green = [
        is_green(marks[0].key, [START] * DEFAULT_PARAMS.context, t, DEFAULT_PARAMS)
        for t in (3, 4, 5)
    ]
    assert [out[0, t].item() for t in (3, 4, 5)] == [DEFAULT_DELTA if g else 0.0 for g in green]


@pytest.mark.parametrize("vocab", [500, 5000])  # full entropy / top-64 entropy
def test_greedy_fast_path_picks_what_the_general_path_picks(
    vocab: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy rows look at their top tokens only; the argmax is the general path's, and so are
    the biased logits of every token that could win."""
    import avocado_watermark.marking as wm_marking

    import avocado_llm.protect.marking as marking

    gen = torch.Generator().manual_seed(5)
    marks = [
        Watermark(account_key("s", i), 3.0, WatermarkParams(min_entropy=0.5)) for i in range(32)
    ]
    logits = torch.randn(6, 32, vocab, generator=gen)
    logits[:, :, :4] += 6 + 2 * torch.randn(6, 32, 4, generator=gen)  # a few plausible tokens
    logits[:, :3, :12] = logits[:, :3, :1] - torch.rand(6, 3, 12, generator=gen)  # many, close
    tokens = torch.randint(0, vocab, (6, 32), generator=gen)
    picks = []
    # the fast path, then the general one (on tensors), then the compiled kernel
    for top, compiled in ((marking.GREEDY_TOP, False), (1, False), (marking.GREEDY_TOP, True)):
        monkeypatch.setattr(wm_marking, "GREEDY_TOP", top)  # the tensor path reads it there
        state = WatermarkState.for_rows(marks, torch.device("cpu"), compiled=compiled)
        assert state is not None and state.greedy
        steps = []
        for step in range(6):
            out = state.apply(logits[step].clone())  # apply biases in place
            steps.append(out.argmax(-1))
            state.advance(tokens[step])
        picks.append(torch.stack(steps))
    assert torch.equal(picks[0], picks[1]) and torch.equal(picks[0], picks[2])
    assert not torch.equal(picks[0], logits.argmax(-1))  # the watermark changed some picks


def test_gate_entropy_is_the_full_entropy_up_to_4096_tokens_then_the_top_64s() -> None:
    gen = torch.Generator().manual_seed(1)
    small, big = torch.randn(3, 4096, generator=gen), torch.randn(3, 4097, generator=gen)
    full = -(small.softmax(-1) * small.log_softmax(-1)).sum(-1)
    assert torch.allclose(gate_entropy(small), full)
    top = big.topk(64, dim=-1).values
    assert torch.allclose(gate_entropy(big), -(top.softmax(-1) * top.log_softmax(-1)).sum(-1))
    assert (gate_entropy(big) <= math.log(64) + 1e-5).all()
