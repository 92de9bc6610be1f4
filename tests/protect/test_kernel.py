"""The compiled watermark step (CPU) against the tensor one (GPU): the same biases, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avocado_llm.protect import gate as entropy_gate
from avocado_llm.protect import kernel
from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import Watermark, WatermarkParams, account_key, gate_entropy


def run(
    marks: list[Watermark | None],
    temperatures: list[float],
    logits: torch.Tensor,
    tokens: torch.Tensor,
    compiled: bool,
    device: str = "cpu",
) -> list[torch.Tensor]:
    """Each step's logits after ``apply`` (on the CPU), the contexts advancing by ``tokens``;
    after the second step two rows leave the batch (``select``), as finished rows do."""
    dev = torch.device(device)
    state = WatermarkState.for_rows(marks, dev, temperatures, compiled)
    assert state is not None
    rows = torch.arange(logits.shape[1])
    out = []
    for step in range(logits.shape[0]):
        out.append(state.apply(logits[step, rows].to(dev)).cpu())  # biases a copy, in place
        state.advance(tokens[step, rows].to(dev))
        if step == 1:
            keep = torch.tensor([i for i in range(len(rows)) if i not in (1, 4)])
            state.select(keep.to(dev))
            rows = rows[keep]
    return out


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def changed_rows(out: list[torch.Tensor], logits: torch.Tensor) -> int:
    """How many (step, row) pairs the watermark changed (the first two steps: every row)."""
    return sum(int((o != logits[i, : o.shape[0]]).any(-1).sum()) for i, o in enumerate(out[:2]))


def hesitant_logits(steps: int, batch: int, vocab: int, seed: int) -> torch.Tensor:
    """Logits of four kinds of rows, in turn: sure of one token (no bias can move it), torn
    between two, a few plausible tokens, many close ones; and in the unsure rows one token
    exactly ``delta`` (2, 3 or 4) below the top, the edge of the candidates."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(steps, batch, vocab, generator=gen) * 2
    kind = torch.arange(batch) % 4
    logits[:, kind == 0, 7] += 25
    logits[:, kind == 1, 7:9] += 10 + torch.rand(steps, int((kind == 1).sum()), 2, generator=gen)
    few = int((kind == 2).sum())
    logits[:, kind == 2, :6] += 5 + 2 * torch.randn(steps, few, 6, generator=gen)
    many = logits[:, kind == 3]
    many[:, :, :12] = 20 - torch.rand(steps, many.shape[1], 12, generator=gen)
    logits[:, kind == 3] = many
    top = logits.max(-1).values  # (steps, B)
    edge = top - (2.0 + torch.arange(batch) % 3)  # each row's delta in the tests below
    logits[:, kind != 0, vocab - 1] = edge[:, kind != 0]  # (the sure rows stay sure)
    return logits


def test_the_kernel_compiles_here() -> None:
    """numba is a dependency: CPU decoding must not silently fall back to the tensor path."""
    assert kernel.available()
    assert kernel._mark_rows_entry is not None  # called past numba's dispatcher
    state = WatermarkState.for_rows([Watermark(1)], torch.device("cpu"))
    assert isinstance(state, kernel.CompiledState)


@pytest.mark.parametrize("vocab", [500, 5000])  # full entropy / top-64 entropy
@pytest.mark.parametrize(
    "temperatures",
    [[0.0] * 16, [0.8] * 16, [0.0, 1.0] * 8],
    ids=["greedy", "sampled", "mixed"],
)
@pytest.mark.parametrize("min_entropy", [0.0, 0.8])
def test_kernel_biases_what_the_tensor_path_biases(
    vocab: int, temperatures: list[float], min_entropy: float
) -> None:
    marks: list[Watermark | None] = [
        Watermark(account_key("k", i), 2.0 + (i % 3), WatermarkParams(min_entropy=min_entropy))
        for i in range(16)
    ]
    marks[5] = None  # a row without a watermark in the batch
    gen = torch.Generator().manual_seed(vocab)
    logits = hesitant_logits(5, 16, vocab, seed=vocab)
    tokens = torch.randint(0, vocab, (5, 16), generator=gen)
    compiled = run(marks, temperatures, logits, tokens, compiled=True)
    assert same(compiled, run(marks, temperatures, logits, tokens, compiled=False))
    assert changed_rows(compiled, logits) >= 5  # the watermark was at work
    assert all(torch.equal(compiled[i][5], logits[i, 5]) for i in range(2))  # not the unmarked


def test_rows_with_their_own_context_width_and_masked_tokens() -> None:
    """Rows of h = 1 and h = 3 in one batch (START-padded contexts), and logits of -inf (masked
    tokens add nothing to the gate's entropy, on both paths)."""
    marks: list[Watermark | None] = [
        Watermark(account_key("w", i), 3.0, WatermarkParams(context=1 + i % 3, min_entropy=0.5))
        for i in range(12)
    ]
    logits = hesitant_logits(6, 12, 300, seed=9)
    logits[:, :, 200:] = float("-inf")
    gen = torch.Generator().manual_seed(9)
    tokens = torch.randint(0, 200, (6, 12), generator=gen)
    for temperatures in ([0.0] * 12, [0.7] * 12):
        compiled = run(marks, temperatures, logits, tokens, compiled=True)
        assert same(compiled, run(marks, temperatures, logits, tokens, compiled=False))
        assert changed_rows(compiled, logits) >= 5
    assert torch.isfinite(gate_entropy(logits[0])).all()


def test_a_confident_greedy_row_is_left_alone() -> None:
    """Greedy: a row whose runner-up is more than delta below its top cannot change its pick,
    so the kernel does not touch it; a close runner-up gets the bias where it is green."""
    marks = [Watermark(account_key("c", 1), 2.0, WatermarkParams(min_entropy=0.0))] * 2
    state = WatermarkState.for_rows(marks, torch.device("cpu"))
    assert isinstance(state, kernel.CompiledState)
    logits = torch.zeros(2, 64)
    logits[0, 3] = 2.5  # margin 2.5 > delta
    logits[1, 3] = 1.5  # margin 1.5: every token within delta of the top is a candidate
    out = state.apply(logits.clone())
    assert torch.equal(out[0], logits[0])
    assert (out[1] != logits[1]).sum() > 10


def kernel_gate_entropy(row: np.ndarray) -> float:
    """The gate's entropy as the kernel computes it: over the whole row up to 4,096 tokens,
    over the heap of its top 64 above."""
    if row.shape[0] <= 4096:
        return float(entropy_gate.entropy(row, float(row.max())))
    values, index = np.empty(64, dtype=row.dtype), np.empty(64, dtype=np.int64)
    entropy_gate.top_k(row, 64, values, index)
    return float(entropy_gate.entropy(values, float(values.max())))


def reference_top_k(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The heap as one comparison per token (a token enters only when larger than the
    smallest kept), driven from Python with the kernel's own sift: what the chunked pass must
    leave, to the order of the heap."""
    values, index = row[:k].copy(), np.arange(k, dtype=np.int64)
    for i in range(k // 2 - 1, -1, -1):
        entropy_gate.sift(values, index, i, k)
    for i in range(k, row.shape[0]):
        if row[i] > values[0]:
            values[0], index[0] = row[i], i
            entropy_gate.sift(values, index, 0, k)
    return values, index


@pytest.mark.parametrize("n", [65, 130, 4097, 20_011])
def test_top_k_skips_chunks_and_keeps_the_same_tokens(n: int) -> None:
    """The chunked top 64 (a chunk whose maximum cannot enter is skipped) keeps exactly the
    tokens of a token-by-token pass: on rows with many ties (logits rounded to a few values,
    so the 64th place is shared), with -inf, and sorted ascending (every chunk enters)."""
    gen = torch.Generator().manual_seed(n)
    rows = [
        torch.randn(n, generator=gen).numpy(),
        (torch.randn(n, generator=gen) * 2).round().numpy(),  # ties at the boundary
        torch.arange(n, dtype=torch.float32).numpy(),  # rising: no chunk is skipped
    ]
    masked = torch.randn(n, generator=gen)
    masked[::3] = float("-inf")
    rows.append(masked.numpy())
    for row in rows:
        row = np.ascontiguousarray(row, dtype=np.float32)
        values, index = np.empty(64, dtype=np.float32), np.empty(64, dtype=np.int64)
        entropy_gate.top_k(row, 64, values, index)
        want_values, want_index = reference_top_k(row, 64)
        assert np.array_equal(values, want_values) and np.array_equal(index, want_index)
        assert np.array_equal(np.sort(values), np.sort(row)[-64:])  # the 64 largest


@pytest.mark.parametrize("vocab", [64, 500, 5000, 50_000])
def test_kernel_entropy_is_the_gate_entropy(vocab: int) -> None:
    """The kernel's gate entropy (float64, a heap of the top 64 above 4,096 tokens) against
    :func:`gate_entropy` (float32 tensors)."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(8, vocab, generator=gen) * torch.linspace(0.5, 6, 8)[:, None]
    ours = torch.tensor([kernel_gate_entropy(row.numpy()) for row in logits], dtype=torch.float64)
    assert torch.allclose(ours, gate_entropy(logits).double(), atol=1e-5)


@pytest.mark.parametrize("support", [2, 64, 512])
def test_entropy_bound_holds_and_closes_the_gate_of_a_sure_row(support: int) -> None:
    """The bound the kernel uses to skip the gate's sum is never below the true entropy, on
    rows from spread out to sure, and is under the default gate once the top is far ahead."""
    gen = torch.Generator().manual_seed(support)
    for spread in (0.1, 1.0, 3.0, 8.0):
        logits = torch.randn(200, support, generator=gen, dtype=torch.float64) * spread
        top2 = logits.topk(min(2, support), dim=-1).values
        true = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        for row in range(200):
            margin = float(top2[row, 0] - top2[row, 1])
            assert entropy_gate.entropy_bound(margin, support) >= float(true[row]) - 1e-9
    assert entropy_gate.entropy_bound(14.0, support) < 0.8 - 1e-3
    assert entropy_gate.entropy_bound(0.0, support) == float("inf")


@pytest.mark.parametrize("vocab", [300, 5000])
def test_picks_are_the_argmax_of_the_biased_logits_ties_included(vocab: int) -> None:
    """The kernel's greedy pick is ``argmax`` of what it left in the logits (the first token
    on a tie), for marked rows, unmarked rows and rows of tied logits."""
    marks: list[Watermark | None] = [
        Watermark(account_key("p", i), 2.0, WatermarkParams(min_entropy=0.3)) for i in range(16)
    ]
    marks[3] = None
    logits = hesitant_logits(4, 16, vocab, seed=vocab + 1)
    logits[:, 8] = 0.0  # every token tied
    logits[:, 9, 10:20] = 50.0  # ten tied at the top
    logits[:, [3, 10], 40] = logits[:, [3, 10], 7] = 50.0  # two tied (and row 3 unmarked)
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, vocab, (4, 16), generator=gen)
    for temperatures in ([0.0] * 16, [0.0, 0.9] * 8):
        state = WatermarkState.for_rows(marks, torch.device("cpu"), temperatures)
        assert isinstance(state, kernel.CompiledState)
        for step in range(4):
            out = state.apply(logits[step].clone())
            assert state.picks is not None
            assert torch.equal(state.picks, out.argmax(-1))
            state.advance(tokens[step])
        assert not torch.equal(out.argmax(-1), logits[3].argmax(-1))  # the bias moved some


def test_the_picks_tensor_handed_back_as_the_sampled_tokens() -> None:
    """As the decode loop does it: the sampler takes ``picks`` as its tokens, overwrites the
    sampled rows in place and hands that tensor to ``advance`` (the kernel reads it before it
    writes the next picks into the same memory); then rows leave. The contexts and biases are
    those of the tensor path fed the same tokens, and each step's ``picks`` is that step's."""
    marks: list[Watermark | None] = [
        Watermark(account_key("s", i), 2.0, WatermarkParams(min_entropy=0.0)) for i in range(8)
    ]
    vocab = 300
    logits = hesitant_logits(6, 8, vocab, seed=11)
    temps = [0.0, 1.0] * 4
    compiled = WatermarkState.for_rows(marks, torch.device("cpu"), temps, True)
    tensors = WatermarkState.for_rows(marks, torch.device("cpu"), temps, False)
    assert isinstance(compiled, kernel.CompiledState) and tensors is not None
    rows = torch.arange(8)
    seen = []
    for step in range(6):
        a = compiled.apply(logits[step, rows].clone())
        b = tensors.apply(logits[step, rows].clone())
        assert torch.equal(a, b)
        tokens = compiled.picks
        assert tokens is not None and torch.equal(tokens, a.argmax(-1))
        sampled = torch.arange(len(rows))[torch.tensor(temps)[rows] > 0]
        tokens[sampled] = (7 * step + sampled * 13) % vocab  # the sampler, in place
        seen.append(tokens.clone())
        tensors.advance(tokens.clone())
        compiled.advance(tokens)
        if step in (1, 3):  # a row leaves (twice): the picks tensor is sized anew
            keep = torch.arange(1, len(rows))
            compiled.select(keep)
            tensors.select(keep)
            rows = rows[keep]
    assert torch.equal(compiled.context, tensors.context)
    assert compiled.context[:, -1].tolist() == seen[-1].tolist()


@pytest.mark.parametrize("vocab", [1, 2, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_vocabularies_and_an_empty_batch(vocab: int, temperature: float) -> None:
    marks: list[Watermark | None] = [
        Watermark(account_key("t", i), 2.0, WatermarkParams(min_entropy=0.0)) for i in range(4)
    ]
    logits = torch.randn(2, 4, vocab, generator=torch.Generator().manual_seed(vocab))
    tokens = torch.zeros(2, 4, dtype=torch.long)
    temps = [temperature] * 4
    compiled = run(marks, temps, logits, tokens, compiled=True)
    assert same(compiled, run(marks, temps, logits, tokens, compiled=False))
    state = WatermarkState.for_rows(marks, torch.device("cpu"), temps)
    assert state is not None
    state.select(torch.tensor([], dtype=torch.long))
    assert state.apply(torch.zeros(0, vocab)).shape == (0, vocab)


def test_selects_and_advances_in_any_order() -> None:
    """``advance`` and ``select`` are only noted and done by the next ``apply``: two selects in
    a row, a select before an advance, and reading ``context`` between give what the tensor
    path gives."""
    marks: list[Watermark | None] = [
        Watermark(account_key("o", i), 3.0, WatermarkParams(min_entropy=0.0)) for i in range(8)
    ]
    logits = hesitant_logits(3, 8, 200, seed=4)
    states = [WatermarkState.for_rows(marks, torch.device("cpu"), None, c) for c in (True, False)]
    outs = []
    for state in states:
        assert state is not None
        out = [state.apply(logits[0].clone())]
        state.advance(torch.arange(8))
        state.select(torch.tensor([0, 2, 3, 5, 6, 7]))
        state.select(torch.tensor([1, 2, 4, 5]))  # rows 2, 3, 6, 7 of the batch
        out.append(state.context)
        out.append(state.apply(logits[1, [2, 3, 6, 7]].clone()))
        state.select(torch.tensor([3, 0]))  # rows 7, 2 (in that order)
        state.advance(torch.tensor([11, 12]))
        out.append(state.apply(logits[2, [7, 2]].clone()))
        out.append(state.context)
        outs.append(out)
    assert same(outs[0], outs[1])
    assert outs[0][-1].tolist() == [[7, 11], [2, 12]]  # the tokens given to rows 7 and 2


def test_the_windowed_gate_decides_as_the_full_entropy() -> None:
    """The small-vocabulary gate sums only the tokens within 12 nats of the top and bounds the
    rest: on rows from flat to sure, and on gates just around each row's entropy, it opens
    exactly where the full entropy reaches the gate."""
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(400, 512, generator=gen) * torch.linspace(0.3, 9.0, 400)[:, None]
    logits[::7, 5] += 15  # some sure rows
    entropy = gate_entropy(logits).double()
    checked = 0
    for row, h in zip(logits, entropy.tolist(), strict=True):
        top = float(row.max())
        for gate in (h - 0.05, h - 2e-3, h + 2e-3, h + 0.05, 0.8):
            if abs(gate - h) < 1e-5:
                continue
            assert entropy_gate.gate_open(row.numpy(), top, gate) == (h >= gate)
            checked += 1
    assert checked > 1900


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [500, 5000, 151_936])
@pytest.mark.parametrize(
    "temperatures", [[0.0] * 16, [0.8] * 16, [0.0, 1.0] * 8], ids=["greedy", "sampled", "mixed"]
)
@pytest.mark.parametrize("triton", [True, False], ids=["triton", "tensors"])
def test_the_gpu_paths_bias_what_the_kernel_biases(
    vocab: int, temperatures: list[float], triton: bool
) -> None:
    """The served model's watermark on a GPU (``make test-gpu``): the Triton kernel and the
    tensor operations on CUDA against the CPU's compiled kernel, the same biases, bit for bit,
    at the default gate."""
    assert torch.cuda.is_available(), "make test-gpu needs a CUDA device"
    marks: list[Watermark | None] = [
        Watermark(account_key("g", i), 2.0 + (i % 3), WatermarkParams()) for i in range(16)
    ]
    marks[5] = None
    logits = hesitant_logits(5, 16, vocab, seed=vocab + 7)
    tokens = torch.randint(0, vocab, (5, 16), generator=torch.Generator().manual_seed(vocab))
    compiled = run(marks, temperatures, logits, tokens, compiled=True)
    on_gpu = run(marks, temperatures, logits, tokens, compiled=triton, device="cuda")
    assert same(compiled, on_gpu)
    assert changed_rows(compiled, logits) >= 5
