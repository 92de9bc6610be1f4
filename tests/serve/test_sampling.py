"""The decode step's token choice (``avocado_llm.serve.sampling``): the counter-based draws, the
exact distribution of both samplers (the compiled one's rejection sampler for watermarked rows
included), and a row's tokens depending on its seed and logits only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avocado_llm.protect import draws
from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import START, Watermark, WatermarkParams, gate_entropy, green_mask
from avocado_llm.serve import sampling
from avocado_llm.serve.sampling import (
    CompiledSampler,
    TensorSampler,
    row_seed,
    sampler_for,
    seed_words,
    uniforms,
)

CPU = torch.device("cpu")
NO_GATE = WatermarkParams(min_entropy=0.0)


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def make(compiled: bool, marks: list, temps: list, top_ps: list, seeds: list) -> sampling.Sampler:
    sampler = sampler_for(marks, temps, top_ps, seeds, CPU, compiled)
    assert isinstance(sampler, CompiledSampler if compiled else TensorSampler)
    return sampler


def test_the_kernel_draws_the_same_uniforms_as_the_tensors() -> None:
    seeds = [0, 1, 7, (1 << 62) - 1, row_seed(123456789123, 5), row_seed(-3, 0)]
    for seed in seeds:
        s0, s1 = seed_words(seed)
        steps = np.array([0, 1, 2, 1000, 123457])
        for k in (0, 1, 8, 15):
            ours = uniforms(np.array(s0), np.array(s1), steps, k).tolist()
            theirs = [draws.counter_uniform(s0, s1, int(t), k) for t in steps]
            assert ours == theirs
            assert all(0 <= u < 1 for u in ours)


def test_the_uniforms_are_uniform_and_their_streams_apart() -> None:
    """200,000 draws (1,000 seeds × 200 steps): the histogram over 100 bins, and the
    correlation of a draw with the next step's and with the neighbouring seed's."""
    seeds = np.array([row_seed(None, 0) for _ in range(1000)])
    s0, s1 = seeds & ((1 << 31) - 1), (seeds >> 31) & ((1 << 31) - 1)
    steps = np.arange(200)
    u = uniforms(s0[:, None], s1[:, None], steps[None, :], 0)  # (1000, 200)
    counts = np.bincount((u.flatten() * 100).astype(np.int64), minlength=100)
    assert chi_square(counts, np.full(100, 0.01)) < 99 + 6 * 14  # 99 dof, 6 sd
    assert abs(float(u.mean()) - 0.5) < 0.005
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:-1], u[1:])):
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 0.01
    # the k-th draw of a step is its own: not the next step's first
    other = uniforms(s0[:, None], s1[:, None], steps[None, :], 1)
    assert abs(np.corrcoef(u.flatten(), other.flatten())[0, 1]) < 0.01


def test_row_seeds() -> None:
    assert row_seed(7, 2) == 9 and row_seed(-1, 0) == (1 << 62) - 1
    assert row_seed(None, 0) != row_seed(None, 0)  # a random one (equal: 1 in 2^62)
    assert 0 <= row_seed(None, 3) < 1 << 62


def target(logits: torch.Tensor, temp: float, top_p: float, bias: torch.Tensor) -> np.ndarray:
    """The exact distribution: the softmax of the biased logits at ``temp``, within its own
    nucleus (the watermarked distribution's, never the model's: issue #18)."""
    q = torch.softmax((logits.double() + bias) / temp, dim=-1)
    order = q.argsort(descending=True)
    before = q[order].cumsum(0) - q[order]
    nucleus = torch.zeros_like(q, dtype=torch.bool)
    nucleus[order[before <= top_p]] = True
    q = q * nucleus
    return (q / q.sum()).numpy()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    ("temp", "top_p", "delta", "gated"),
    [
        (1.0, 1.0, 0.0, False),
        (0.7, 0.8, 0.0, False),
        (1.0, 1.0, 3.0, False),
        (1.0, 0.9, 3.0, True),
        (0.7, 0.9, 3.0, True),
        (0.2, 1.0, 3.0, False),
        (0.08, 1.0, 3.0, False),
        (1.0, 0.6, 3.0, True),
        (1.0, 1e-9, 3.0, True),
        (1e-6, 1.0, 3.0, False),
        (0.01, 0.6, 3.0, False),
    ],
)
def test_the_draws_follow_the_biased_distribution(
    compiled: bool, temp: float, top_p: float, delta: float, gated: bool
) -> None:
    """20,000 rows with the same logits, key and context (one green list) and their own
    seeds: the tokens' counts against the exact distribution (chi-square, 7 dof); gated: the
    default gate, open (entropy 1.6 nats). At T = 0.2 (a red token kept with probability
    e^-15) the green candidates hold under 1% of the model's mass, so the rejection sampler
    mostly falls back to its exact draw. Colder (T = 0.08: delta / T = 37.5, a red top token
    several nats above green ones at T = 0.01 and 1e-6) and with a nucleus the row is biased
    first and drawn from the biased distribution: a tiny ``top_p`` or temperature gives the
    biased argmax, never the model's own (the top token here is red)."""
    n, vocab = 20_000, 8
    logits = torch.tensor([2.0, 1.6, 1.5, 0.8, 0.0, -0.5, -1.0, -9.0])
    if temp == 0.2:  # the green candidates (1, 3, 4) far below the red ones (0, 2)
        logits = torch.tensor([2.0, 0.9, 1.9, 0.8, 0.7, 0.0, -1.0, -2.0])
    elif temp < 0.1:
        logits = torch.tensor([2.0, 1.9, 1.8, 1.75, 1.7, 0.0, -1.0, -2.0])
    params = WatermarkParams() if gated else NO_GATE
    mark = Watermark(key=5, delta=delta, params=params) if delta else None
    seeds = [row_seed(1000, i) for i in range(n)]
    sampler = make(compiled, [mark] * n, [temp] * n, [top_p] * n, seeds)
    tokens = sampler.choose(logits.expand(n, vocab).clone())
    bias = torch.zeros(vocab)
    if mark is not None:
        green = green_mask(torch.tensor([5]), torch.full((1, 2), START), vocab, 0.5)[0]
        if temp < 0.5:  # the setting it is meant for: the top token red, a few green below
            assert not bool(green[0]) and 0 < int(green[:5].sum()) < 5
        reach = delta + 12.0 * temp
        bias = (green & (logits >= logits.max() - reach)).double() * delta
    counts = np.bincount(tokens.numpy(), minlength=vocab)
    assert chi_square(counts, target(logits, temp, top_p, bias)) < 30  # p ≈ 1e-4 at 7 dof


def test_a_top_p_of_1_keeps_every_token() -> None:
    """``nucleus`` leaves a row of ``top_p`` 1 as it is, bit for bit, though float32's
    cumulative sum passes 1 before its tail (checked: the tail a ``> top_p`` test alone would
    cut). The tail weighs ~1e-7, yet a cold watermarked row drawn by rejection multiplies its
    green tokens by up to e^18 — and a batch-mate's nucleus decided whether the sort ran, so
    the row's tokens depended on its batch."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 1000, generator=gen) * torch.linspace(0.5, 20, 200)[:, None]
    probs = torch.softmax(logits / 0.17, dim=-1)
    top_p = torch.ones(200)
    top_p[::2] = 0.9  # batch-mates with a nucleus
    kept = sampling.nucleus(probs, top_p)
    assert torch.equal(kept[1::2], probs[1::2])
    ordered = probs.sort(dim=-1, descending=True).values
    assert bool(((ordered.cumsum(-1) - ordered)[1::2] > 1).any())  # what was cut before
    assert bool((kept[::2] == 0).any())


def test_compiled_and_tensor_samplers_draw_the_same_tokens_without_a_watermark() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 64, 300, generator=gen) * 3
    temps = [0.0, 0.5, 1.0, 1.0, 1.3, 0.9] * 4
    top_ps = [1.0, 1.0, 1.0, 0.9, 0.5, 0.95] * 4
    seeds = [row_seed(42, i) for i in range(24)]
    out = []
    for compiled in (True, False):
        sampler = make(compiled, [None] * 24, temps, top_ps, seeds)
        out.append(torch.stack([sampler.choose(logits[s, :24].clone()).clone() for s in range(6)]))
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[0][:, 0], logits[:, 0].argmax(-1))  # the greedy row


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(("temp", "top_p"), [(1.0, 1.0), (1.0, 0.6), (0.1, 1.0)])
def test_a_rows_tokens_depend_on_its_seed_only(compiled: bool, temp: float, top_p: float) -> None:
    """Row 3's answer alone, in a batch of 8 in another order (with rows watermarked, rows
    whose nucleus or temperature has them biased before their draw, and rows leaving): the
    same tokens, whether the row itself is drawn by rejection or biased first. Another seed:
    other tokens."""
    gen = torch.Generator().manual_seed(1)
    steps, vocab = 12, 50
    logits = torch.randn(steps, vocab, generator=gen) * 1.5
    mark = Watermark(key=9, params=NO_GATE)

    def answer(seed: int, batch: int, place: int) -> list[int]:
        marks = [Watermark(key=i + 100) if i % 2 else None for i in range(batch)]
        marks[place] = mark
        seeds = [row_seed(7, i) for i in range(batch)]
        seeds[place] = seed
        temps = [(1.0, 0.05, 0.0, 0.8)[i % 4] for i in range(batch)]
        top_ps = [(1.0, 1.0, 0.5, 0.7, 1.0)[i % 5] for i in range(batch)]
        temps[place], top_ps[place] = temp, top_p
        sampler = make(compiled, marks, temps, top_ps, seeds)
        rows, out = list(range(batch)), []
        for step in range(steps):
            noise = torch.randn(len(rows), vocab, generator=gen)
            batch_logits = noise.clone()
            batch_logits[rows.index(place)] = logits[step]
            out.append(int(sampler.choose(batch_logits)[rows.index(place)]))
            if step == 4 and batch > 1:  # two rows leave
                keep = [i for i, r in enumerate(rows) if r in (place, 0, batch - 1)]
                sampler.select(torch.tensor(keep))
                rows = [rows[i] for i in keep]
        return out

    alone = answer(row_seed(3, 0), 1, 0)
    assert answer(row_seed(3, 0), 8, 3) == alone
    assert answer(row_seed(3, 0), 8, 6) == alone
    assert answer(row_seed(4, 0), 8, 3) != alone


def test_the_gate_from_the_probabilities_is_the_entropy_of_the_logits() -> None:
    """A row at temperature 1 takes its gate's entropy from the softmax the sampler computed
    and any token of it (no exponential): the same as the tensors' ``gate_entropy`` within
    float32 rounding, whichever token anchors it."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(300, 512, generator=gen) * torch.linspace(0.2, 12.0, 300)[:, None]
    logits[::7, :3] += 25  # sure rows, far from 0
    probs = torch.softmax(logits, dim=-1)
    want = gate_entropy(logits.double())
    for i in range(300):
        p, x = probs[i].numpy(), logits[i].numpy()
        for anchor in (int(logits[i].argmax()), int(torch.multinomial(probs[i], 1, generator=gen))):
            lean, mass = draws.row_lean(p, x, float(x[anchor]))
            got = lean / mass - np.log(p[anchor] / mass)
            assert abs(got - float(want[i])) < 2e-5


def test_a_shut_gate_draws_the_models_own_token() -> None:
    """Watermarked rows at temperature 1 whose entropy is below the gate draw exactly the
    tokens of the same rows without a watermark (same seeds); open ones do not always."""
    gen = torch.Generator().manual_seed(4)
    n, vocab = 400, 64
    logits = torch.randn(n, vocab, generator=gen)
    logits[: n // 2, 0] += 12  # sure: entropy well below 0.8 nats
    entropy = gate_entropy(logits)
    assert bool((entropy[: n // 2] < 0.7).all()) and bool((entropy[n // 2 :] > 0.9).all())
    seeds = [row_seed(11, i) for i in range(n)]
    marks = [Watermark(key=i + 1) for i in range(n)]
    plain = make(True, [None] * n, [1.0] * n, [1.0] * n, seeds).choose(logits.clone()).clone()
    marked = make(True, marks, [1.0] * n, [1.0] * n, seeds).choose(logits.clone())
    assert torch.equal(marked[: n // 2], plain[: n // 2])
    assert not torch.equal(marked[n // 2 :], plain[n // 2 :])


@pytest.mark.parametrize("lazy", [True, False])
def test_the_rejection_sampler_weighs_only_candidates_within_reach(lazy: bool) -> None:
    """``draw_marked`` on a made-up row (every token green): proposals uniform over four
    tokens, logits 0, -14.9, -15.1 and -20 with reach 15: the first two are candidates (weight
    1), the others weigh ``red``. ``lazy``: the cut is not given and no probability is sure
    (the sampler finds the top itself); else the cut is given."""
    row = np.array([0.0, -14.9, -15.1, -20.0], dtype=np.float32)
    cdf = np.array([0.25, 0.5, 0.75, 1.0])
    red = float(np.exp(-1.0))
    tables = torch.arange(4, dtype=torch.long).numpy()  # any token mix: gamma 1, all green
    probs = np.full(4, 1e-9, dtype=np.float32) if lazy else np.empty(0, dtype=np.float32)
    cut = np.nan if lazy else -15.0
    counts = np.zeros(4)
    for i in range(20_000):
        s0, s1 = seed_words(row_seed(77, i))
        t = draws.draw_marked(row, cdf, cut, red, s0, s1, 3, 12345, 2.0**31, tables,
                                probs, 1.0, 15.0)  # fmt: skip
        counts[t] += 1
    weights = np.array([1.0, 1.0, red, red])
    assert chi_square(counts, weights / weights.sum()) < 25  # 3 dof: p ≈ 1.5e-5


@pytest.mark.parametrize("vocab", [300, 5000])
def test_greedy_rows_pick_the_argmax_of_the_biased_logits(vocab: int) -> None:
    """The compiled decode step (which skips the gate of a row whose top token is green)
    against the tensors' (which biases every row, then takes the argmax): the same tokens,
    step after step, as the contexts advance and rows leave; ties at the top included."""
    gen = torch.Generator().manual_seed(vocab)
    steps, batch = 8, 24
    logits = torch.randn(steps, batch, vocab, generator=gen) * 2
    logits[:, ::3, :12] = 6 + (torch.rand(steps, 8, 12, generator=gen) * 4).round() / 2  # ties
    marks = [Watermark(key=i + 3) if i % 5 else None for i in range(batch)]
    seeds = [row_seed(5, i) for i in range(batch)]
    out = []
    for compiled in (True, False):
        sampler = make(compiled, marks, [0.0] * batch, [1.0] * batch, seeds)
        rows, tokens = list(range(batch)), []
        for step in range(steps):
            tokens.append(sampler.choose(logits[step, rows].clone()).tolist())
            if step in (2, 5):
                keep = [i for i in range(len(rows)) if i % 4]
                sampler.select(torch.tensor(keep))
                rows = [rows[i] for i in keep]
        out.append(tokens)
    assert out[0] == out[1]
    unmarked = [int(t) for t in logits[0].argmax(-1)]
    assert out[0][0] != unmarked  # the watermark moved some argmax


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("vocab", [300, 5000])
def test_a_tiny_top_p_or_temperature_is_greedy_on_the_biased_logits(
    compiled: bool, vocab: int
) -> None:
    """Issue #18: ``top_p`` 1e-9 at temperature 1, a temperature of 1e-6, and both, give the
    argmax of the watermarked logits — the tokens greedy decoding gives the same rows, step
    after step as the contexts advance and rows leave — never the model's own argmax, which
    they used to hand out (the nucleus was the model's own distribution's; the compiled
    rejection sampler lost the green candidates of a cold row in its cumulative sum)."""
    gen = torch.Generator().manual_seed(vocab + 1)
    steps, batch = 6, 24
    logits = torch.randn(steps, batch, vocab, generator=gen) * 2
    marks = [Watermark(key=i + 3) if i % 5 else None for i in range(batch)]
    seeds = [row_seed(5, i) for i in range(batch)]
    settings = {
        "greedy": (0.0, 1.0),
        "top_p": (1.0, 1e-9),
        "cold": (1e-6, 1.0),
        "both": (1e-6, 1e-9),
    }
    out = {}
    for name, (temp, top_p) in settings.items():
        sampler = make(compiled, marks, [temp] * batch, [top_p] * batch, seeds)
        rows, tokens = list(range(batch)), []
        for step in range(steps):
            tokens.append(sampler.choose(logits[step, rows].clone()).tolist())
            if step == 2:
                keep = [i for i in range(len(rows)) if i % 4]
                sampler.select(torch.tensor(keep))
                rows = [rows[i] for i in keep]
        out[name] = tokens
    assert out["top_p"] == out["greedy"]
    assert out["cold"] == out["greedy"]
    assert out["both"] == out["greedy"]
    unmarked = [int(t) for t in logits[0].argmax(-1)]
    assert out["top_p"][0] != unmarked  # the watermark moved some argmax


@pytest.mark.parametrize("vocab", [400, 5000])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_with_log_probabilities_the_logits_carry_the_watermark(vocab: int, top_p: float) -> None:
    """A batch where a row asks for log-probabilities: the compiled step leaves in the logits
    the biases the tensors' watermark state gives them (fed the same tokens: greedy rows and
    drawn ones, at temperature 1 and not), so the log-probabilities a plan exposes are the
    watermarked distribution's; without it (where the step skips the gate of rows whose
    outcome does not depend on it), drawn rows' logits are left as the model gave them, and
    the tokens are the same. With ``top_p`` < 1 (and at T = 0.1) drawn watermarked rows are
    biased before their nucleus is taken, with or without log-probabilities."""
    gen = torch.Generator().manual_seed(8)
    batch = 30
    logits = torch.randn(4, batch, vocab, generator=gen) * 1.5
    logits[:, ::4, 0] += 14  # sure rows: the gate stays shut
    temps = [(0.0, 1.0, 0.7, 0.1)[i % 4] for i in range(batch)]
    top_ps = [top_p] * batch
    marks = [Watermark(key=i + 1) if i % 7 else None for i in range(batch)]
    seeds = [row_seed(2, i) for i in range(batch)]
    compiled = sampler_for(marks, temps, top_ps, seeds, CPU, True, biased_logits=True)
    plain = sampler_for(marks, temps, top_ps, seeds, CPU, True)
    tensors = WatermarkState.for_rows(marks, CPU, temps, compiled=False)
    assert tensors is not None
    exact = torch.tensor([m is not None and (t == 0.1 or (t > 0 and top_p < 1))
                          for m, t in zip(marks, temps, strict=True)])  # fmt: skip
    greedy = torch.tensor([t == 0 for t in temps])
    drawn = ~greedy & ~exact  # (by rejection where watermarked)
    for step in range(4):
        a, b, c = (logits[step].clone() for _ in range(3))
        ta, tc = compiled.choose(a).clone(), plain.choose(c).clone()
        assert torch.equal(a, tensors.apply(b))
        tensors.advance(ta)
        assert not torch.equal(a, logits[step])  # some row was biased
        assert torch.equal(c[drawn], logits[step][drawn])
        assert torch.equal(c[exact], a[exact])  # biased before the nucleus either way
        assert torch.equal(ta, tc)  # the same tokens either way
        assert torch.equal(ta[greedy], a[greedy].argmax(-1))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_temperature_below_float32_is_greedy_everywhere(compiled: bool) -> None:
    """A temperature of 1e-320 (the API accepts it: it is above 0) rounds to 0 in float32:
    the row is greedy in every part of the step — before, the compiled step biased it as a
    cold drawn row and then again as a greedy one (green logits +2δ in the log-probabilities)
    when a batch-mate sampled."""
    gen = torch.Generator().manual_seed(12)
    batch, vocab = 32, 300
    logits = torch.randn(batch, vocab, generator=gen) * 2
    marks = [Watermark(key=i + 3) for i in range(batch)]
    seeds = [row_seed(1, i) for i in range(batch)]
    out = []
    for cold in (1e-320, 0.0):
        temps = [cold if i % 2 else 1.0 for i in range(batch)]
        sampler = sampler_for(marks, temps, [1.0] * batch, seeds, CPU, compiled, True)
        biased = logits.clone()
        out.append((sampler.choose(biased).clone(), biased))
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1], out[1][1])
    assert float((out[0][1] - logits).max()) < 3.0 + 1e-5  # one bias, never two
