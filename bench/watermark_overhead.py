"""Watermark overhead in the batching engine: the same batches decoded with every row
watermarked (its own account key, the default entropy-gated scheme) and with none, interleaved
and repeated; medians side by side.

(a) the in-process engine (``LocalEngine`` → ``batching.decode``), 32 requests of 24 tokens each
    (``ignore_eos``, so both sides decode exactly the same number of steps), greedy and sampled;
(b) the watermark step alone (``apply`` on a (32, V) logits tensor: the engine's — the compiled
    kernel of the device — and the tensor operations) for the model's vocabulary and for a 152k
    vocabulary (Qwen3/gpt-oss size), against the softmax the sampler already does on the same
    tensor;
(c) the answers as served: the same requests greedy, each stopping at its end: the mean
    latency of a request (its whole answer), on against off;
(d) the engine's token choice alone (the sampler's ``choose``: the watermark's work and the
    draw), timed inside the decode loop of (a): its median a step, on against off — the
    watermark's own cost, apart from what its different answers cost downstream.

Each repeat runs three arms in turn — off, on, and off again — each first in turn; a ratio is the
median over repeats of the arm's time over the same repeat's "off". "off again / off" is the
noise floor of the machine: the watermark costs nothing measurable where ``on / off`` is as
close to 1 as it is.

Each ratio comes with a 95% bootstrap interval of its median over the repeats. The last line
is ``ratio_greedy=<on/off> ratio_sampled=<on/off> ratio_served=<on/off>
noise=<largest |off again/off - 1|> ci_greedy=<lo>-<hi> ci_sampled=… ci_served=…``.

    .venv/bin/python bench/watermark_overhead.py [--model zoo/qwen-tiny] [--repeats 15]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path

import torch

from avocado_llm.protect.marking import WatermarkState
from avocado_llm.protect.scheme import Watermark, account_key
from avocado_llm.serve import sampling
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.world.tasks import FAMILIES, generate

BATCH = 32
TOKENS = 24
MARKS = [Watermark(account_key("bench", i)) for i in range(BATCH)]
"""One account each, derived once (the server caches an account's key: ``protect.serving``)."""


CHOICE_TIMES: list[float] = []
"""Seconds of each call of the engine's token choice (the sampler's ``choose``: the watermark's
work and the draw), appended by :func:`time_the_choice`'s wrapper."""


def time_the_choice() -> None:
    """Time every ``choose`` of the engine's samplers from inside the decode loop (caches as
    cold as they are right after a forward pass)."""
    for cls in (sampling.CompiledSampler, sampling.TensorSampler):
        inner = cls.choose

        def timed(self: object, logits: torch.Tensor, inner=inner) -> torch.Tensor:  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = inner(self, logits)
            CHOICE_TIMES.append(time.perf_counter() - t0)
            return out

        cls.choose = timed  # type: ignore[method-assign]


async def run_batch(
    engine: LocalEngine, prompts: list, temperature: float, marked: bool, ignore_eos: bool = True
) -> tuple[float, float, int]:
    """Decode one batch of ``BATCH`` requests (one per account when marked): seconds for the
    whole batch, the mean seconds a request waited for its whole answer, the tokens produced."""
    gens = []
    t0 = time.perf_counter()
    for i, messages in enumerate(prompts):
        mark = MARKS[i] if marked else None
        opts = SamplingOptions(
            max_tokens=TOKENS,
            temperature=temperature,
            seed=i,
            ignore_eos=ignore_eos,
            watermark=mark,
        )
        gens.append(engine.generate([engine.chat_prompt(messages)], opts))

    async def drain(g: object) -> float:
        async for _ in g:  # type: ignore[attr-defined]
            pass
        return time.perf_counter() - t0

    latencies = await asyncio.gather(*[drain(g) for g in gens])
    tokens = sum(g.usage.completion_tokens for g in gens)
    return time.perf_counter() - t0, statistics.fmean(latencies), tokens


def interval(ratios: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of paired ratios (resampling the repeats; fixed
    seed): "nothing measurable" where it holds 1."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


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


def step_cost(
    vocab: int, repeats: int, device: torch.device
) -> dict[str, tuple[float, float, float]]:
    """Median seconds of ``apply`` (the engine's: the compiled kernel of the device; and the
    tensor operations) and of a softmax on the same (BATCH, vocab) logits (on a GPU each timed
    with the device synchronised, so a step's time is its kernels' time)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    marks = [Watermark(account_key("bench", i)) for i in range(BATCH)]
    out = {}
    for case, hesitant, temperature in (
        ("confident", False, 0.0),
        ("hesitant greedy", True, 0.0),
        ("hesitant sampled", True, 1.0),
    ):
        logits = synthetic_logits(vocab, hesitant).to(device)
        medians = []
        for compiled in (None, False):
            state = WatermarkState.for_rows(marks, device, [temperature] * BATCH, compiled)
            assert state is not None
            state.advance(torch.randint(vocab, (BATCH,), device=device))
            state.apply(logits.clone())  # warm-up (a kernel's first call compiles it)
            apply_t = []
            for _ in range(repeats * 4):
                fresh = logits.clone()  # apply biases in place
                sync()
                t0 = time.perf_counter()
                state.apply(fresh)
                sync()
                apply_t.append(time.perf_counter() - t0)
            medians.append(statistics.median(apply_t))
        soft_t = []
        for _ in range(repeats * 4):
            sync()
            t0 = time.perf_counter()
            torch.softmax(logits, dim=-1)
            sync()
            soft_t.append(time.perf_counter() - t0)
        out[case] = (medians[0], medians[1], statistics.median(soft_t))
    return out


async def main_async(args: argparse.Namespace) -> None:
    engine = LocalEngine(
        args.model,
        threads=args.threads,
        max_batch_size=BATCH,
        batch_wait_ms=50,
        device=args.device,
    )
    await engine.start()
    prompts = [e.messages for e in generate(list(FAMILIES), "heldout", 6, seed=1)][:BATCH]
    ratios, noise, intervals = {}, {}, {}
    settings = (("greedy", 0.0, True), ("sampled", 1.0, True), ("served", 0.0, False))
    for name, temperature, ignore_eos in settings:
        await run_batch(engine, prompts, temperature, True, ignore_eos)  # warm-up
        times: dict[str, list[float]] = {"off": [], "on": [], "off again": []}
        choice: dict[str, list[float]] = {arm: [] for arm in times}
        tokens: dict[str, int] = {}
        for r in range(args.repeats):
            arms = list(times)
            for arm in arms[r % 3 :] + arms[: r % 3]:  # each arm first in turn (drift cancels)
                CHOICE_TIMES.clear()
                total, latency, tokens[arm] = await run_batch(
                    engine, prompts, temperature, arm == "on", ignore_eos
                )
                times[arm].append(total if ignore_eos else latency)
                choice[arm].extend(CHOICE_TIMES)
        pairs = {
            arm: [a / b for a, b in zip(times[arm], times["off"], strict=True)]
            for arm in ("on", "off again")
        }
        ratios[name], noise[name] = (statistics.median(pairs[a]) for a in ("on", "off again"))
        intervals[name] = interval(pairs["on"])
        m_off = statistics.median(times["off"])
        what = (
            f"per batch of {BATCH}×{TOKENS} tokens"
            if ignore_eos
            else f"mean request latency, each answer to its end ({tokens['off']} tokens off, "
            f"{tokens['on']} on)"
        )
        print(
            f"({'a' if ignore_eos else 'c'}) {name:7s}: off {m_off * 1000:7.2f} ms {what}  "
            f"ratio on/off {ratios[name]:.3f} [95%: {intervals[name][0]:.3f}-"
            f"{intervals[name][1]:.3f}]  (off again/off {noise[name]:.3f})"
        )
        if ignore_eos:  # the same steps in every arm: the choice's own cost a step
            c_off, c_on = (statistics.median(choice[a]) for a in ("off", "on"))
            step = m_off / TOKENS
            print(
                f"(d) {name:7s}: the token choice inside the decode loop, median of "
                f"{len(choice['on'])} steps: off {c_off * 1e6:6.1f} µs, on {c_on * 1e6:6.1f} µs "
                f"(+{(c_on - c_off) * 1e6:.1f} µs, {(c_on - c_off) / step:.2%} of a step)"
            )
    await engine.aclose()
    vocab = int(engine.hf_model.config.vocab_size)
    for v in (vocab, 151_936):
        for case, (a, tensors, soft) in step_cost(v, args.repeats, engine.device).items():
            print(
                f"(b) vocab {v:>7d} {case:16s}: watermark step {a * 1e3:7.3f} ms "
                f"(tensor ops {tensors * 1e3:7.3f} ms), softmax {soft * 1e3:7.3f} ms "
                f"(ratio {a / soft:.2f})"
            )
    spread = max(abs(v - 1) for v in noise.values())
    print(
        f"ratio_greedy={ratios['greedy']:.3f} ratio_sampled={ratios['sampled']:.3f} "
        f"ratio_served={ratios['served']:.3f} noise={spread:.3f} "
        + " ".join(f"ci_{k}={lo:.3f}-{hi:.3f}" for k, (lo, hi) in intervals.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("zoo/qwen-tiny"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (the engine's) [cpu]")
    parser.add_argument(
        "--tensor-path",
        action="store_true",
        help="decode with the watermark's tensor operations instead of the device's compiled "
        "kernel (to compare the two)",
    )
    args = parser.parse_args()
    if args.tensor_path:  # what WatermarkState.for_rows asks before it picks a kernel
        from avocado_llm.protect import gpu_kernel, kernel

        kernel.available = gpu_kernel.available = lambda *_: False  # type: ignore[method-assign]
    torch.set_num_threads(args.threads)
    time_the_choice()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
