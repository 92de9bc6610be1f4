"""The decode step's token choice, side by side: the sampler the engine had until 27 November
(a softmax, then one ``torch.multinomial`` per sampled row with that row's ``torch.Generator``)
against :func:`avocado_llm.serve.sampling.sampler_for` (counter-based draws, one
``searchsorted`` for the batch; on the CPU one compiled call), on the same logits — shaped like a
language model's: a few plausible tokens above a bulk of unlikely ones — for batches of 1, 8
and 32 rows, vocabularies of 512 (the tiny student) and 151,936 (Qwen3) tokens, top_p 1 and 0.9,
temperature 1, no watermark. Median time of a step; the ratio is old / new.

The last line is ``speedup_32=<old/new, 32 rows, 512 tokens, top_p 1>``.

    .venv/bin/python bench/sampler_speed.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from avocado_llm.serve.sampling import row_seed, sampler_for


def old_sample(logits: torch.Tensor, temps: torch.Tensor, top_p: torch.Tensor,
               generators: list[torch.Generator]) -> torch.Tensor:  # fmt: skip
    """The engine's sampler before the counter-based draws (``serve/batching.py``, verbatim
    but for its argument types)."""
    tokens = logits.argmax(dim=-1)
    sampled = (temps > 0).nonzero().flatten().tolist()
    if not sampled:
        return tokens
    probs = torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)
    if bool((top_p < 1).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        sorted_p[(sorted_p.cumsum(dim=-1) - sorted_p) > top_p[:, None]] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    for i in sampled:
        tokens[i] = torch.multinomial(probs[i], 1, generator=generators[i])[0]
    return tokens


def logits_like(batch: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 2
    logits[:, :20] += 8 + 2 * torch.randn(batch, 20, generator=g)
    return logits


def median_step(fn, logits: list[torch.Tensor]) -> float:  # type: ignore[no-untyped-def]
    times = []
    for x in logits:
        fresh = x.clone()
        t0 = time.perf_counter()
        fn(fresh)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    speedup = {}
    for vocab in (512, 151_936):
        repeats = args.repeats if vocab < 10_000 else max(args.repeats // 20, 5)
        for batch in (1, 8, 32):
            for top_p in (1.0, 0.9):
                steps = [logits_like(batch, vocab, s) for s in range(repeats)]
                temps, tops = torch.ones(batch), torch.full((batch,), top_p)
                gens = [torch.Generator().manual_seed(i) for i in range(batch)]
                seeds = [row_seed(1, i) for i in range(batch)]
                new = {
                    name: sampler_for(
                        [None] * batch, [1.0] * batch, [top_p] * batch, seeds, cpu, compiled
                    )
                    for name, compiled in (("compiled", True), ("tensors", False))
                }
                for sampler in new.values():  # warm-up (compiles nothing: numba caches)
                    sampler.choose(steps[0].clone())
                old_sample(steps[0].clone(), temps, tops, gens)
                t_old = median_step(partial(old_sample, temps=temps, top_p=tops, generators=gens),
                                    steps)  # fmt: skip
                t_new = {name: median_step(s.choose, steps) for name, s in new.items()}
                print(
                    f"vocab {vocab:>7d} rows {batch:>2d} top_p {top_p}: per-row multinomial "
                    f"{t_old * 1e6:9.1f} µs, compiled {t_new['compiled'] * 1e6:9.1f} µs "
                    f"(×{t_old / t_new['compiled']:5.1f}), tensors {t_new['tensors'] * 1e6:9.1f} "
                    f"µs (×{t_old / t_new['tensors']:5.1f})"
                )
                speedup[(vocab, batch, top_p)] = t_old / t_new["compiled"]
    print(f"speedup_32={speedup[(512, 32, 1.0)]:.2f}")


if __name__ == "__main__":
    main()
