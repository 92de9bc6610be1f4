"""Watermark overhead in the batching engine: the same batches decoded with every row
watermarked (its own account key, the default entropy-gated scheme) and with none, interleaved
and repeated; medians side by side.

(a) the in-process engine (``LocalEngine`` → ``batching.decode``), 32 requests of 24 tokens each
    (``ignore_eos``, so both sides decode exactly the same number of steps), greedy and sampled;
(b) the watermark step alone (``WatermarkState.apply`` on a (32, V) logits tensor) for the
    model's vocabulary and for a 152k vocabulary (Qwen3/gpt-oss size), against the softmax the
    sampler already does on the same tensor.

(c) the answers as served: the same requests greedy, each stopping at its end (time per
    token produced, on against off).

The last line is ``ratio_greedy=<on/off> ratio_sampled=<on/off> ratio_served=<on/off>``.

    .venv/bin/python bench/watermark_overhead.py [--model zoo/qwen-tiny] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import torch

from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import Watermark, account_key
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.world.tasks import FAMILIES, generate

BATCH = 32
TOKENS = 24


async def run_batch(
    engine: LocalEngine, prompts: list, temperature: float, marked: bool, ignore_eos: bool = True
) -> tuple[float, int]:
    """Seconds to decode one batch of ``BATCH`` requests (one per account when marked), and
    the tokens produced."""
    gens = []
    t0 = time.perf_counter()
    for i, messages in enumerate(prompts):
        mark = Watermark(account_key("bench", i)) if marked else None
        opts = SamplingOptions(
            max_tokens=TOKENS,
            temperature=temperature,
            seed=i,
            ignore_eos=ignore_eos,
            watermark=mark,
        )
        gens.append(engine.generate([engine.chat_prompt(messages)], opts))

    async def drain(g: object) -> None:
        async for _ in g:  # type: ignore[attr-defined]
            pass

    await asyncio.gather(*[drain(g) for g in gens])
    return time.perf_counter() - t0, sum(g.usage.completion_tokens for g in gens)


def synthetic_logits(vocab: int, hesitant: bool) -> torch.Tensor:
    """(BATCH, vocab) logits shaped like a language model's: a bulk of unlikely tokens and a
    few plausible ones, far above (confident: one; hesitant: twenty, entropy ≈ 2-3 nats)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, vocab, generator=g) * 2
    if hesitant:
        logits[:, :20] += 15 + torch.randn(BATCH, 20, generator=g)
    else:
        logits[:, 0] += 30
    return logits


def step_cost(vocab: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of ``apply`` and of a softmax on the same (BATCH, vocab) logits."""
    marks = [Watermark(account_key("bench", i)) for i in range(BATCH)]
    out = {}
    for case, hesitant, temperature in (
        ("confident", False, 0.0),
        ("hesitant greedy", True, 0.0),
        ("hesitant sampled", True, 1.0),
    ):
        state = WatermarkState.for_rows(marks, torch.device("cpu"), [temperature] * BATCH)
        assert state is not None
        state.advance(torch.randint(vocab, (BATCH,)))
        logits = synthetic_logits(vocab, hesitant)
        apply_t, soft_t = [], []
        for _ in range(repeats * 4):
            fresh = logits.clone()  # apply biases in place
            t0 = time.perf_counter()
            state.apply(fresh)
            apply_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.softmax(logits, dim=-1)
            soft_t.append(time.perf_counter() - t0)
        out[case] = (statistics.median(apply_t), statistics.median(soft_t))
    return out


async def main_async(args: argparse.Namespace) -> None:
    engine = LocalEngine(args.model, threads=args.threads, max_batch_size=BATCH, batch_wait_ms=50)
    await engine.start()
    prompts = [e.messages for e in generate(list(FAMILIES), "heldout", 6, seed=1)][:BATCH]
    ratios = {}
    for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        await run_batch(engine, prompts, temperature, True)  # warm-up
        on, off = [], []
        for _ in range(args.repeats):
            off.append((await run_batch(engine, prompts, temperature, False))[0])
            on.append((await run_batch(engine, prompts, temperature, True))[0])
        m_on, m_off = statistics.median(on), statistics.median(off)
        ratios[name] = m_on / m_off
        print(
            f"(a) engine {name:7s}: off {m_off * 1000:7.1f} ms  on {m_on * 1000:7.1f} ms  "
            f"per batch of {BATCH}×{TOKENS} tokens  ratio {ratios[name]:.3f}"
        )
    # (c) the answers as served: each row stops at its end (the watermark may change a few
    # answers and so their length: compare time per token produced)
    on_c, off_c = [], []
    for _ in range(args.repeats):
        t, n = await run_batch(engine, prompts, 0.0, False, ignore_eos=False)
        off_c.append(t / n)
        t, n = await run_batch(engine, prompts, 0.0, True, ignore_eos=False)
        on_c.append(t / n)
    m_on, m_off = statistics.median(on_c), statistics.median(off_c)
    ratios["served"] = m_on / m_off
    print(
        f"(c) answers as served (greedy, stop at the end): off {m_off * 1000:.3f} ms  on "
        f"{m_on * 1000:.3f} ms per token  ratio {ratios['served']:.3f}"
    )
    await engine.aclose()
    vocab = int(engine.hf_model.config.vocab_size)
    for v in (vocab, 151_936):
        for case, (a, soft) in step_cost(v, args.repeats).items():
            print(
                f"(b) vocab {v:>7d} {case:16s}: watermark step {a * 1e3:7.3f} ms, "
                f"softmax {soft * 1e3:7.3f} ms (ratio {a / soft:.2f})"
            )
    print(
        f"ratio_greedy={ratios['greedy']:.3f} ratio_sampled={ratios['sampled']:.3f} "
        f"ratio_served={ratios['served']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("zoo/qwen-tiny"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
