"""The in-process engine: dynamic batching, batched decoding equal to one-by-one decoding,
stop strings across tokens, and the rate limiter's arithmetic."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from serve_helpers import World
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from avocado_llm.serve.batching import TextTracker
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.serve.ratelimit import RateLimiter, duration


def test_concurrent_requests_share_batches(world: World, engine: LocalEngine) -> None:
    seen = len(engine.batch_sizes)

    async def eight() -> list[int]:
        async with world.async_client() as client:
            answers = await asyncio.gather(*(
                client.chat.completions.create(
                    model=world.model, max_tokens=30, temperature=0,
                    messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
                )
                for i in range(8)
            ))  # fmt: skip
        return [a.usage.completion_tokens for a in answers]

    assert all(tokens > 0 for tokens in asyncio.run(eight()))
    sizes = list(engine.batch_sizes)[seen:]
    assert sum(sizes) == 8
    assert max(sizes) > 1, f"no batching: batch sizes {sizes}"


def test_batched_greedy_decoding_equals_hf_generate(world: World, engine: LocalEngine) -> None:
    """Prompts of different lengths in one batch (left padding, KV cache, rows leaving the
    batch early) give exactly what ``generate`` gives for each prompt alone."""
    questions = ["What is 3 + 4?", "Reverse the word 'avocado'.", "Convert 3 km to m."]
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    assert len({p.tokens for p in prompts}) > 1

    async def batched() -> list[tuple[str, int]]:
        options = SamplingOptions(max_tokens=24, temperature=0)
        generations = [engine.generate([p], options) for p in prompts]  # queued together
        texts = ["".join([d.text async for d in g]) for g in generations]
        return [(t, g.usage.completion_tokens) for t, g in zip(texts, generations, strict=True)]

    seen = len(engine.batch_sizes)
    got = asyncio.run(batched())
    assert list(engine.batch_sizes)[seen:] == [3]
    for prompt, (text, tokens) in zip(prompts, got, strict=True):
        ids = torch.tensor([prompt.token_ids])
        out = engine.hf_model.generate(
            ids, max_new_tokens=24, do_sample=False, eos_token_id=sorted(engine.eos_ids)
        )[0, ids.shape[1] :].tolist()
        assert tokens == len(out)
        assert text == engine.tokenizer.decode(out, skip_special_tokens=True)


def test_text_tracker_holds_back_a_possible_stop_string(engine: LocalEngine) -> None:
    tok = engine.tokenizer
    tracker = TextTracker(tok, stops=["is 7"])
    sent, stopped = "", False
    for token in tok("The answer is 7.", add_special_tokens=False)["input_ids"]:
        delta, stopped = tracker.push(token)
        sent += delta
        if stopped:
            break
    assert stopped and sent == "The answer "


def _reference(tok: PreTrainedTokenizerBase, ids: list[int], stops: Sequence[str]) -> list[str]:
    """What the text tracker hands out token by token, by the obvious (quadratic) method:
    search the whole text for every stop string, hold back the longest end of the text that
    starts one. The last item is the text at the stop (or at the end)."""
    out, sent = [], 0
    for k in range(1, len(ids) + 1):
        text = str(tok.decode(ids[:k], skip_special_tokens=True))
        if text.endswith("\ufffd"):
            out.append("")
            continue
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        if found:
            cut = max(min(found), sent)
            out.append(text[sent:cut] + "|stop")
            return out
        held = max(
            (j for s in stops for j in range(len(s) - 1, 0, -1) if text.endswith(s[:j])),
            default=0,
        )
        safe = max(sent, len(text) - held)
        out.append(text[sent:safe])
        sent = safe
    return out


def _tracked(tok: PreTrainedTokenizerBase, ids: list[int], stops: Sequence[str]) -> list[str]:
    tracker, out = TextTracker(tok, stops), []
    for token in ids:
        delta, stopped = tracker.push(token)
        out.append(delta + ("|stop" if stopped else ""))
        if stopped:
            break
    return out


@pytest.fixture(scope="module")
def tokenizer(zoo_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(zoo_dir / "qwen-tiny")


def test_text_tracker_finds_stops_across_tokens_and_overlaps_like_a_full_search(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Stop strings split over several tokens, overlapping each other, repeating themselves
    (``aab`` in ``aaab``), one inside another: the incremental matcher hands out exactly what
    searching the whole text at every token does, piece by piece (so a stream holds back
    the same text), and stops at the same place."""
    rng = random.Random(18)
    fixed = [
        ("The answer is 7.", ["is 7"]),
        ("aaab aab abab", ["aab"]),
        ("abcd", ["abcd", "bc"]),
        ("xx abababc", ["ababc", "babc", "c"]),
        ("hello world", ["lo w", "o wor"]),
        ("no stop here", ["zz", "here!"]),
    ]
    cases = fixed + [
        (
            "".join(rng.choice("ab c") for _ in range(rng.randint(1, 40))),
            ["".join(rng.choice("ab c") for _ in range(rng.randint(1, 6))) for _ in range(4)],
        )
        for _ in range(400)
    ]
    stopped = 0
    for text, stops in cases:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        want = _reference(tokenizer, ids, stops)
        assert _tracked(tokenizer, ids, stops) == want, (text, stops)
        stopped += bool(want) and want[-1].endswith("|stop")
    assert stopped > 100  # the random cases do reach their stop strings


def test_text_tracker_cost_does_not_grow_with_the_stop_strings_length(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Four stop strings of 200,000 characters each (longer than the API allows), the text
    matching a long prefix of them, over 300 tokens: the old tracker copied every prefix of
    every stop string at every token (seconds per token); the incremental one is done in a
    fraction of a second (the bound here is generous: it only catches quadratic work)."""
    stops = ["a" * 199_999 + "b", "a" * 199_999 + "c", "ab" * 100_000, "a " * 100_000]
    ids = tokenizer("a" * 300, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 30
    started = time.perf_counter()
    tracker, sent = TextTracker(tokenizer, stops), ""
    for token in ids * (300 // len(ids) + 1):
        delta, stopped = tracker.push(token)
        sent += delta
        assert not stopped
        assert time.perf_counter() - started < 10, "stop strings are matched in quadratic time"
    assert sent == ""  # all of it could still be the start of the first two stop strings
    assert tracker.flush() == tokenizer.decode(tracker.ids)


def test_rate_limiter_refills_refunds_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    refused = limiter.acquire("k", rpm=2, tpm=None, tokens=10)
    assert not refused.allowed and refused.limit == "requests"
    assert refused.headers["retry-after"] == "30" and refused.retry_after_s == pytest.approx(30)
    now[0] = 30.0  # half a minute refills one request
    assert limiter.acquire("k", rpm=2, tpm=None, tokens=10).allowed
    assert limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    assert not limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    limiter.refund("t", tpm=100, tokens=80)  # the first used only 10 of its 90
    assert limiter.acquire("t", rpm=None, tpm=100, tokens=90).allowed
    too_big = limiter.acquire("t", rpm=None, tpm=100, tokens=1000)
    assert not too_big.allowed and "retry-after" not in too_big.headers
    assert [duration(s) for s in (0.02, 1.5, 360)] == ["20ms", "1.5s", "6m0s"]
