"""Harvest throughput: batched ``LocalTeacher`` against one-prompt-at-a-time ``generate``.

On one zoo teacher and the same 64 tiny-world training prompts (several task families), in one
run, interleaved and repeated (medians are reported):

(a) ``LocalTeacher.generate_sync`` at batch 32: greedy, top-20 log-probabilities recorded,
    ``max_new_tokens`` 24 — what the harvest does;
(b) one prompt at a time with plain ``model.generate`` (greedy, same ``max_new_tokens``, the
    tokenizer's chat template, end-of-turn ids from the generation config) — the naive loop;
(c) teacher-forced forward passes at batch 32 over prompt+answer sequences of the lengths (a)
    produced, no KV cache, no generation loop — the model's token-rate ceiling on this machine.

(a) and (b) count generated tokens up to and including the end-of-turn token; (c) counts the
tokens it processes (padding excluded). The last line is ``speedup=<a/b> ceiling_fraction=<a/c>``.

    .venv/bin/python bench/harvest_throughput.py [--model zoo/qwen-tiny] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from avocado_llm.teachers.base import Messages, SamplingParams
from avocado_llm.teachers.hf import LocalTeacher
from avocado_llm.world.tasks import generate

N_PROMPTS = 64
BATCH = 32
FAMILIES = ["arithmetic", "reverse", "facts", "counting", "sorting", "units"]


def prompts(n: int, seed: int = 0) -> list[Messages]:
    """``n`` training prompts, taken round-robin across the families."""
    per_family = -(-n // len(FAMILIES))
    by_family = [generate([f], "train", per_family, seed) for f in FAMILIES]
    mixed = [ex for group in zip(*by_family, strict=True) for ex in group]
    return [ex.messages for ex in mixed[:n]]


def until_eos(ids: list[int], eos: set[int]) -> int:
    """Tokens generated up to and including the first end-of-turn token."""
    return next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))


class Bench:
    def __init__(self, model_dir: Path, max_new_tokens: int) -> None:
        self.teacher = LocalTeacher("bench", model_dir, device="cpu", batch_size=BATCH)
        self.model = self.teacher.model
        # A tokenizer of its own for (b): the checkpoint's, untouched (right padding, no batch).
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        eos = self.model.generation_config.eos_token_id
        self.eos = list(eos) if isinstance(eos, list) else [eos]
        self.pad = self.model.generation_config.pad_token_id
        if self.pad is None:
            self.pad = self.eos[0]
        self.max_new_tokens = max_new_tokens
        self.params = SamplingParams(
            temperature=0.0, max_new_tokens=max_new_tokens, top_logprobs=20
        )
        self.forward_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def batched(self, conversations: list[Messages]) -> int:
        """(a): the harvest path. Returns generated tokens (end-of-turn included)."""
        results = self.teacher.generate_sync(conversations, self.params)
        return sum(c.completion_tokens for completions in results for c in completions)

    @torch.inference_mode()
    def one_by_one(self, conversations: list[Messages]) -> int:
        """(b): plain ``generate``, one prompt at a time."""
        eos = set(self.eos)
        total = 0
        for conversation in conversations:
            enc = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
            )
            total += until_eos(out[0, enc["input_ids"].shape[1] :].tolist(), eos)
        return total

    def prepare_forward(self, conversations: list[Messages]) -> None:
        """Sequences for (c): each prompt followed by the answer (a) gave, end-of-turn included;
        batched as the teacher batches (sorted by length, left padding)."""
        results = self.teacher.generate_sync(conversations, self.params)
        sequences = []
        for conversation, (completion,) in zip(conversations, results, strict=True):
            prompt = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, return_dict=True
            )["input_ids"]
            answer = list(completion.token_ids or [])
            if completion.finish_reason == "stop":
                answer.append(self.eos[0])
            sequences.append(list(prompt) + answer)
        order = sorted(range(len(sequences)), key=lambda i: len(str(conversations[i])))
        for start in range(0, len(order), BATCH):
            chunk = [sequences[i] for i in order[start : start + BATCH]]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            self.forward_batches.append((ids, mask))

    @torch.inference_mode()
    def forward_only(self, _: list[Messages]) -> int:
        """(c): one teacher-forced forward pass per batch; returns processed (unpadded) tokens."""
        total = 0
        for ids, mask in self.forward_batches:
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)
            total += int(mask.sum())
        return total


def timed(fn: Callable[[list[Messages]], int], conversations: list[Messages]) -> float:
    t0 = time.perf_counter()
    tokens = fn(conversations)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("zoo/qwen-tiny"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice); on a machine shared with "
        "other busy processes, 1 avoids thread oversubscription, which slows tiny ops 10-100x",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    conversations = prompts(N_PROMPTS)
    bench = Bench(args.model, args.max_new_tokens)
    bench.prepare_forward(conversations)
    modes = {
        "a": ("batched LocalTeacher (batch 32, top-20 logprobs)", bench.batched),
        "b": ("one prompt at a time, model.generate", bench.one_by_one),
        "c": ("forward-only ceiling (batch 32, teacher-forced)", bench.forward_only),
    }
    print(
        f"model={args.model} prompts={len(conversations)} families={len(FAMILIES)} "
        f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}"
    )
    for _, fn in modes.values():  # warm-up once each
        fn(conversations)
    rates: dict[str, list[float]] = {key: [] for key in modes}
    for _ in range(args.repeats):
        for key, (_, fn) in modes.items():
            rates[key].append(timed(fn, conversations))
    median = {key: statistics.median(values) for key, values in rates.items()}
    for key, (label, _) in modes.items():
        runs = " ".join(f"{r:.0f}" for r in rates[key])
        print(f"({key}) {label}: {median[key]:.0f} tokens/s (runs: {runs})")
    spread = max(max(values) / min(values) for values in rates.values())
    if spread > 2:
        hint = (
            "a quiet machine" if torch.get_num_threads() == 1 else "--threads 1, or a quiet machine"
        )
        print(
            f"warning: runs of one mode differ up to {spread:.1f}x; the CPU is contended, so the "
            f"ratios below are unreliable (try {hint})"
        )
    print(
        f"speedup={median['a'] / median['b']:.2f} ceiling_fraction={median['a'] / median['c']:.2f}"
    )


if __name__ == "__main__":
    main()
