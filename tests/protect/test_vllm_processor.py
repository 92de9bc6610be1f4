"""The vLLM logits processor (``avocado_watermark``) against the in-process engine's watermark:
the same biased logits for the same keys, contexts and strengths, step after step, while vLLM
adds, removes, moves and swaps rows of its persistent batch. No vLLM needed: the processor's
work is :class:`avocado_watermark.batch.BatchWatermarks`, driven here with vLLM's
``BatchUpdate`` shape."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest
import torch
from avocado_watermark import xargs
from avocado_watermark.batch import BatchWatermarks
from avocado_watermark.marking import TensorMarks
from avocado_watermark.scheme import START
from test_kernel import hesitant_logits

from avocado_llm.protect import kernel
from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import Watermark, WatermarkParams, account_key


class Move(Enum):  # vLLM's MoveDirectionality
    UNIDIRECTIONAL = 1
    SWAP = 2


@dataclass
class Params:  # the fields of vLLM's SamplingParams the processor reads
    temperature: float
    extra_args: dict[str, Any] | None


@dataclass
class Update:  # vLLM's BatchUpdate
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple[int, Params, list[int] | None, list[int]]] = field(default_factory=list)
    moved: list[tuple[int, int, Move]] = field(default_factory=list)


def marks_for(n: int) -> list[Watermark | None]:
    """Keys of several accounts, strengths and params of several plans, rows without any."""
    out: list[Watermark | None] = []
    for i in range(n):
        if i % 5 == 4:
            out.append(None)
            continue
        params = WatermarkParams(context=1 + i % 3, min_entropy=(0.0, 0.8, 0.3)[i % 3])
        out.append(Watermark(account_key("s", i), (2.0, 3.0, 4.0)[i % 3], params))
    return out


def request(mark: Watermark | None, temperature: float) -> Params:
    return Params(temperature, xargs.to_xargs(mark) if mark is not None else None)


@pytest.mark.parametrize("vocab", [500, 5000])  # full entropy / top-64 entropy
@pytest.mark.parametrize("temperatures", ["greedy", "sampled", "mixed"])
@pytest.mark.parametrize("compiled", [False, True])  # the engine's tensor path / CPU kernel
def test_processor_biases_what_the_engine_biases(
    vocab: int, temperatures: str, compiled: bool
) -> None:
    batch, steps = 15, 6
    marks = marks_for(batch)
    temps = {"greedy": [0.0] * batch, "sampled": [0.8] * batch, "mixed": [0.0, 1.0] * 8}
    temps_list = temps[temperatures][:batch]
    logits = hesitant_logits(steps, batch, vocab, seed=vocab + len(temperatures))
    tokens = torch.randint(0, vocab, (steps, batch), generator=torch.Generator().manual_seed(3))

    engine = WatermarkState.for_rows(marks, torch.device("cpu"), temps_list, compiled)
    assert engine is not None
    assert isinstance(engine, kernel.CompiledState) == compiled
    processor = BatchWatermarks()
    outputs: list[list[int]] = [[] for _ in range(batch)]  # vLLM's lists, grown in place
    pairs = enumerate(zip(marks, temps_list, strict=True))
    added = [(i, request(m, t), [1, 2], outputs[i]) for i, (m, t) in pairs]
    processor.update(Update(batch, added=added))
    changed = 0
    for step in range(steps):
        ours = processor.apply(logits[step].clone())
        theirs = engine.apply(logits[step].clone())
        assert torch.equal(ours, theirs), f"step {step}"
        changed += int((ours != logits[step]).any(-1).sum())
        engine.advance(tokens[step])
        for i in range(batch):
            outputs[i].append(int(tokens[step, i]))
        processor.update(None)  # vLLM: no change to the batch's makeup
    assert changed > 0  # the watermark did bias something


def test_rows_removed_added_moved_and_swapped_keep_their_own_watermark() -> None:
    """vLLM condenses its batch (one-way moves), swaps rows and refills holes: each request
    keeps its own key and context, and its row's biases are those of a fresh engine state for
    the batch as it then stands."""
    vocab, steps = 700, 8
    gen = torch.Generator().manual_seed(11)
    logits = hesitant_logits(steps, 8, vocab, seed=5)
    pool = marks_for(12)
    temps = [0.0, 0.7, 0.0, 1e-6, 0.0, 1.3, 0.0, 0.0, 0.5, 0.0, 0.0, 0.9]
    outputs: list[list[int]] = [[] for _ in range(12)]
    slot = {i: i for i in range(6)}  # request → row; requests 0..5 first
    processor = BatchWatermarks()
    first = [(i, request(pool[i], temps[i]), None, outputs[i]) for i in range(6)]
    processor.update(Update(6, added=first))
    plan = {
        2: Update(5, removed=[1], moved=[(5, 1, Move.UNIDIRECTIONAL)]),  # 1 ends, 5 fills row 1
        3: Update(6, added=[(5, request(pool[6], temps[6]), None, outputs[6])]),  # 6 at row 5
        4: Update(6, moved=[(0, 3, Move.SWAP)]),
        5: Update(6, removed=[2], added=[(2, request(pool[7], temps[7]), None, outputs[7])]),
        6: Update(7, added=[(6, request(pool[8], temps[8]), None, outputs[8])]),
    }
    for step in range(steps):
        if step in plan:
            upd = plan[step]
            processor.update(upd)
            for index in upd.removed:
                slot = {r: s for r, s in slot.items() if s != index}
            for index, _, _, out in upd.added:
                slot[next(j for j, o in enumerate(outputs) if o is out)] = index
            for a, b, how in upd.moved:
                at_a = [r for r, s in slot.items() if s == a]
                at_b = [r for r, s in slot.items() if s == b]
                for r in at_a:
                    slot[r] = b
                for r in at_b:
                    if how is Move.SWAP:
                        slot[r] = a
                    else:
                        del slot[r]
        size = max(slot.values()) + 1
        row_of = {s: r for r, s in slot.items()}
        step_logits = logits[step, :size]
        ours = processor.apply(step_logits.clone())
        # the reference: the engine's tensor class over the batch as it stands, with contexts
        # from each request's own history
        marks = [pool[row_of[i]] if i in row_of else None for i in range(size)]
        ref_temps = [temps[row_of[i]] if i in row_of else 0.0 for i in range(size)]
        ref_temps = [0.0 if t < 1e-5 else t for t in ref_temps]
        ref = TensorMarks(marks, torch.device("cpu"), ref_temps)
        ctx = []
        for i in range(size):
            hist = outputs[row_of[i]][-ref.h :] if i in row_of else []
            ctx.append([START] * (ref.h - len(hist)) + hist)
        ref.context = torch.tensor(ctx, dtype=torch.long)
        assert torch.equal(ours, ref.apply(step_logits.clone())), f"step {step}"
        picks = torch.randint(0, vocab, (size,), generator=gen)
        for i, r in row_of.items():
            outputs[r].append(int(picks[i]))


def test_a_greedy_request_matches_the_engines_greedy_pick_whatever_its_row() -> None:
    """One request's greedy answer under the processor, token by token, is the in-process
    engine's (its CPU kernel), whether it decodes alone or beside other rows."""
    vocab, steps = 900, 12
    logits = hesitant_logits(steps, 4, vocab, seed=9)
    mark = Watermark(account_key("s", 42))
    engine = WatermarkState.for_rows([mark], torch.device("cpu"), [0.0], compiled=True)
    assert engine is not None
    alone, crowded = BatchWatermarks(), BatchWatermarks()
    out_alone: list[int] = []
    out_crowded: list[int] = []
    alone.update(Update(1, added=[(0, request(mark, 0.0), None, out_alone)]))
    others = [(i, request(Watermark(account_key("s", i)), 0.9), None, []) for i in (0, 1, 3)]
    crowded.update(Update(4, added=[*others, (2, request(mark, 0.0), None, out_crowded)]))
    for step in range(steps):
        row = logits[step, 1:2]
        pick = int(engine.apply(row.clone()).argmax(-1))
        assert int(alone.apply(row.clone()).argmax(-1)) == pick
        batch = logits[step].clone()
        batch[2] = row[0]
        assert int(crowded.apply(batch).argmax(-1)[2]) == pick
        engine.advance(torch.tensor([pick]))
        out_alone.append(pick)
        out_crowded.append(pick)


def test_xargs_round_trip_and_refusals() -> None:
    mark = Watermark(account_key("s", 7), 3.0, WatermarkParams(0.25, 3, 0.5))
    assert xargs.from_xargs(xargs.to_xargs(mark)) == mark
    assert xargs.from_xargs(None) is None
    assert xargs.from_xargs({"other_extension": 1}) is None
    assert xargs.from_xargs({**xargs.to_xargs(mark), xargs.DELTA: 0.0}) is None  # off
    good = xargs.to_xargs(mark)
    bad: list[dict[str, Any]] = [
        {xargs.KEY: 5},  # partial
        {**good, xargs.PREFIX + "secret": "x"},  # unknown name
        {**good, xargs.KEY: -1},
        {**good, xargs.KEY: 1 << 31},
        {**good, xargs.KEY: "5"},
        {**good, xargs.KEY: True},
        {**good, xargs.DELTA: math.inf},
        {**good, xargs.DELTA: 1e9},
        {**good, xargs.GAMMA: 1.0},
        {**good, xargs.CONTEXT: 0},
        {**good, xargs.CONTEXT: 10_000},
        {**good, xargs.MIN_ENTROPY: -1.0},
        {**good, xargs.MIN_ENTROPY: math.nan},
    ]
    for args in bad:
        with pytest.raises(ValueError):
            xargs.from_xargs(args)


def test_the_package_imports_nothing_of_avocado_llm_or_vllm() -> None:
    """It installs into a vLLM virtualenv alone: torch is its only dependency (vllm.py, the
    processor class, imports vLLM itself)."""
    import ast
    from pathlib import Path

    import avocado_watermark

    root = Path(avocado_watermark.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        allowed = {"__future__", "avocado_watermark", "torch", "math", "logging", "functools",
                   "collections", "dataclasses", "typing"}  # fmt: skip
        if path.name == "vllm.py":
            allowed.add("vllm")
        assert names <= allowed, f"{path.name}: {names - allowed}"
