"""Sweep the watermark's strength and gate on the served student, on a *sweep split* of held-out
prompts disjoint from the ones ``bench/radioactivity.py`` reports (held-out seed 1, minus every
prompt of held-out seed 0), so the defaults are not tuned on the reported prompts.

For each (engine gate, delta): greedy answers through the in-process engine (every row under
one account's key), held-out accuracy against the same prompts unwatermarked, and the
detector's numbers over all answers under several detector gates (entropy ≥ g, given the
prompts): scored distinct pairs, green share, exact p-value, and how many answers (in a random
order) it takes to reach 200 scored pairs.

    .venv/bin/python bench/watermark_sweep.py [--model runs/watermark/radioactivity/served]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from avocado_llm.protect.detect import EntropyGate
from avocado_llm.protect.scheme import (
    Watermark,
    WatermarkParams,
    account_key,
    distinct_pairs,
    score_pairs,
)
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.world.tasks import FAMILIES, generate, get_family


def sweep_split(per_family: int) -> list:
    reported = {e.id for e in generate(list(FAMILIES), "heldout", 300, seed=0)}
    out = []
    for f in FAMILIES:
        pool = [e for e in generate([f], "heldout", 1000, seed=1) if e.id not in reported]
        out.extend(pool[:per_family])
    return out


async def answers(engine: LocalEngine, examples: list, mark: Watermark | None) -> list[str]:
    opts = SamplingOptions(max_tokens=24, temperature=0.0, watermark=mark)
    gens = [engine.generate([engine.chat_prompt(e.messages)], opts) for e in examples]

    async def text(g: object) -> str:
        return "".join([d.text async for d in g])  # type: ignore[attr-defined]

    return list(await asyncio.gather(*[text(g) for g in gens]))


def accuracy(examples: list, texts: list[str]) -> float:
    ok = [get_family(e.family).verify(t, e.answer) for e, t in zip(examples, texts, strict=True)]
    return sum(ok) / len(ok)


def stats(gate: EntropyGate, prompts: list, answers: list) -> tuple[list, list]:
    """Per answer position: the served model's entropy (nats) and top-1 minus top-2 logit."""
    ent, mar = [], []
    with torch.inference_mode():
        for messages, a in zip(prompts, answers, strict=True):
            p = gate.prompt_ids(messages)
            logits = gate.model(input_ids=torch.tensor([p + a])).logits[0].float()
            lg = logits[len(p) - 1 : len(p) - 1 + len(a)]
            logp = torch.log_softmax(lg, dim=-1)  # the gate_entropy of a vocabulary this small
            ent.append((-(logp.exp() * logp).sum(-1)).tolist())
            top2 = lg.topk(2, dim=-1).values
            mar.append((top2[:, 0] - top2[:, 1]).tolist())
    return ent, mar


async def main_async(args: argparse.Namespace) -> None:
    examples = sweep_split(args.per_family)
    print(f"sweep split: {len(examples)} held-out prompts (disjoint from held-out seed 0)")
    engine = LocalEngine(args.model, threads=1, max_batch_size=64, batch_wait_ms=20)
    await engine.start()
    gate = EntropyGate.from_model_dir(args.model, 0.0)
    tok = gate.tokenizer
    prompts = [e.messages for e in examples]
    key = account_key("sweep", 1)
    base = await answers(engine, examples, None)
    acc0 = accuracy(examples, base)
    print(f"off: accuracy {acc0:.2%}")
    rows = []
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    for engine_gate in args.engine_gates:
        for delta in args.deltas:
            params = WatermarkParams(0.5, 2, engine_gate)
            t0 = time.monotonic()
            texts = await answers(engine, examples, Watermark(key, delta, params))
            acc = accuracy(examples, texts)
            changed = sum(a != b for a, b in zip(texts, base, strict=True))
            ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
            ent, mar = stats(gate, prompts, ids)
            gates = [("entropy", g) for g in sorted({engine_gate, *args.detector_gates})]
            gates += [("margin", m) for m in args.margins]
            for kind, g in gates:
                if kind == "entropy" and g < engine_gate:
                    continue
                if kind == "entropy":
                    keep = [[e >= g for e in row] for row in ent]
                else:
                    keep = [[m < g for m in row] for row in mar]
                pairs = distinct_pairs(ids, params, keep)
                [s] = score_pairs(pairs, [key], params)
                need = None
                for n in range(1, len(order) + 1):
                    sub = [ids[i] for i in order[:n]]
                    k = [keep[i] for i in order[:n]]
                    if len(distinct_pairs(sub, params, k)) >= 200:
                        sub_pairs = distinct_pairs(sub, params, k)
                        [s200] = score_pairs(sub_pairs, [key], params)
                        need = (n, s200.p_value)
                        break
                row = {
                    "engine_gate": engine_gate,
                    "delta": delta,
                    "detector_gate": f"{kind}{'>=' if kind == 'entropy' else '<'}{g}",
                    "accuracy": acc,
                    "cost_points": round(100 * (acc0 - acc), 2),
                    "changed": changed,
                    "scored": s.scored,
                    "green": round(s.green_fraction, 3),
                    "p_all": s.p_value,
                    "answers_for_200": need[0] if need else None,
                    "p_200": need[1] if need else None,
                }
                rows.append(row)
                print(json.dumps(row), f"({time.monotonic() - t0:.0f}s)", flush=True)
    await engine.aclose()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"accuracy_off": acc0, "rows": rows}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/watermark/radioactivity/served"))
    parser.add_argument("--per-family", type=int, default=100)
    parser.add_argument("--engine-gates", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--deltas", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--detector-gates", type=float, nargs="+", default=[0.01, 0.1, 0.3])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--out", type=Path, default=Path("runs/watermark/sweep/sweep.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
