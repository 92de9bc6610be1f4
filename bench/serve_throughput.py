"""Serve throughput: output tokens/s of the in-process engine (dynamic batching) at 1, 8 and 32
concurrent clients, side by side in one run.

The engine is ``LocalEngine`` as ``avocado serve --model DIR`` runs it (batch up to 32, 5 ms
batching wait), on the distilled student ``runs/tiny/student`` when it exists, else the zoo's
``qwen-tiny``. Each client is closed-loop: it sends a chat request (tiny-world prompts, mixed
families, through the model's chat template), reads the answer to the end, and sends the next.
Every request asks for ``--max-tokens`` tokens with ``ignore_eos`` (so all levels produce the
same work per request) at temperature 1. Levels are interleaved and repeated; medians are
reported, with the mean batch size the engine formed. The last line is
``batching_speedup=<tokens/s at 32 / tokens/s at 1>``.

    .venv/bin/python bench/serve_throughput.py [--model DIR] [--repeats 3] [--threads 1]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path

import torch

from avocado_llm.serve.engine import Prompt, SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.world.tasks import generate

FAMILIES = ["arithmetic", "reverse", "facts", "counting", "sorting", "units"]
LEVELS = (1, 8, 32)
REQUESTS_PER_CLIENT = {1: 6, 8: 3, 32: 2}
"""Closed-loop rounds per client at each level (enough for a steady state at each)."""


def default_model() -> Path:
    student = Path("runs/tiny/student")
    return student if (student / "config.json").exists() else Path("zoo/qwen-tiny")


def conversations(n: int) -> list[list[dict[str, str]]]:
    per_family = -(-n // len(FAMILIES))
    by_family = [generate([f], "train", per_family, 0) for f in FAMILIES]
    mixed = [ex for group in zip(*by_family, strict=True) for ex in group]
    return [list(ex.messages) for ex in mixed[:n]]


async def client(
    engine: LocalEngine, prompts: itertools.cycle[Prompt], requests: int, max_tokens: int
) -> int:
    """Closed loop: ``requests`` answers read to the end; returns the tokens produced."""
    produced = 0
    for i in range(requests):
        options = SamplingOptions(max_tokens=max_tokens, temperature=1.0, seed=i, ignore_eos=True)
        generation = engine.generate([next(prompts)], options)
        async for _ in generation:
            pass
        produced += generation.usage.completion_tokens
    return produced


async def level(
    engine: LocalEngine, prompts: list[Prompt], concurrency: int, max_tokens: int
) -> tuple[float, float]:
    """Output tokens/s and the mean batch size, with ``concurrency`` clients."""
    cycle = itertools.cycle(prompts)
    requests = REQUESTS_PER_CLIENT[concurrency]
    batches_before = len(engine.batch_sizes)
    t0 = time.perf_counter()
    tokens = await asyncio.gather(
        *(client(engine, cycle, requests, max_tokens) for _ in range(concurrency))
    )
    seconds = time.perf_counter() - t0
    sizes = list(engine.batch_sizes)[batches_before:]
    return sum(tokens) / seconds, statistics.mean(sizes) if sizes else 0.0


async def run(args: argparse.Namespace) -> None:
    engine = LocalEngine(
        args.model, device=args.device, max_batch_size=32, batch_wait_ms=5, threads=args.threads
    )
    await engine.start()
    try:
        prompts = [engine.chat_prompt(m) for m in conversations(64)]
        print(
            f"model={args.model} max_tokens={args.max_tokens} (ignore_eos) "
            f"threads={torch.get_num_threads()} prompts={len(prompts)} "
            f"mean_prompt_tokens={statistics.mean(p.tokens for p in prompts):.0f}"
        )
        for concurrency in LEVELS:  # warm-up
            await level(engine, prompts, concurrency, 4)
        rates: dict[int, list[float]] = {c: [] for c in LEVELS}
        batch: dict[int, list[float]] = {c: [] for c in LEVELS}
        for _ in range(args.repeats):
            for concurrency in LEVELS:
                rate, mean_batch = await level(engine, prompts, concurrency, args.max_tokens)
                rates[concurrency].append(rate)
                batch[concurrency].append(mean_batch)
    finally:
        await engine.aclose()
    median = {c: statistics.median(r) for c, r in rates.items()}
    for c in LEVELS:
        runs = " ".join(f"{r:.0f}" for r in rates[c])
        print(
            f"clients={c:2d}: {median[c]:7.0f} output tokens/s "
            f"(x{median[c] / median[1]:.2f} of 1 client; mean batch "
            f"{statistics.mean(batch[c]):.1f} requests; runs: {runs})"
        )
    spread = max(max(r) / min(r) for r in rates.values())
    if spread > 2:
        print(
            f"warning: runs of one level differ up to {spread:.1f}x; the CPU is contended, so "
            "the ratio below is unreliable"
        )
    print(f"batching_speedup={median[32] / median[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads [1: fastest on a CPU shared with other busy processes]",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N [cpu]")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
