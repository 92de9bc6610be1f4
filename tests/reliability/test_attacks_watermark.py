"""Attacks on the watermark through the sampling parameters (issue #18.1): a real ``avocado serve``
process serving a model in process, one account with a watermarked key (the default plan's
strength) and a ``--watermark 0`` key. For every sampling parameter the API accepts —
temperature (0, tiny, low, high), ``top_p`` (down to 1e-9), ``seed`` (given or not), ``n``,
log-probabilities, and the legacy completions endpoint — the watermarked key's answers must
still carry its watermark: the detector's exact binomial p-value over their distinct (context,
token) pairs stays tiny, while the unwatermarked key's answers are not flagged.

The model is qwen-tiny's architecture and tokenizer with fresh (seeded) weights: it hesitates at
every position, so the default, entropy-gated scheme acts on every token and ~150 tokens give
p-values below 1e-15 when the watermark is there and ~0.5 when it is not — no flaky margin.
(The zoo's teachers are too sure of themselves for a handful of prompts to tell.) Before the fix
a tiny ``top_p`` (and a temperature of 0.01 or below, on the CPU's compiled sampler) returned
the unwatermarked argmax: p ≈ 0.5."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from rel_helpers import SECRET, ServerProcess, free_port, running

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.protect.detect import Detector
from avocado_llm.protect.scheme import account_key
from avocado_llm.world.tasks import FAMILIES, generate

NAME = "hesitant"
PROMPTS = [e.messages for e in generate(list(FAMILIES), "heldout", 6, seed=5)]
MAX_TOKENS = 24
PLAN = dict(max_n=3, logprobs=True, max_top_logprobs=5)
MARKED_P = 1e-6
"""A watermarked key's answers, ~140 distinct pairs at ~90% green: p below 1e-15 in practice."""
UNMARKED_P = 1e-3
"""Unwatermarked answers: p ~ U(0, 1); 1e-3 leaves room for the several checks below."""


@dataclass
class LocalServer(ServerProcess):
    """``avocado serve --model DIR`` (the in-process engine), as a plain subprocess."""

    model_dir: Path = field(default_factory=Path)

    def argv(self) -> list[str]:
        return ["serve", "--model", str(self.model_dir), "--model-name", NAME,
                "--database-url", self.database_url, "--port", str(self.port),
                "--host", "127.0.0.1", "--device", "cpu", "--threads", "1"]  # fmt: skip


def hesitant_model(zoo_dir: Path, out: Path) -> Path:
    """qwen-tiny's architecture and tokenizer with seeded random weights (entropy ~6 nats)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(zoo_dir / "qwen-tiny")
    config.initializer_range = 0.1
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(zoo_dir / "qwen-tiny").save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (zoo_dir / "qwen-tiny" / name).exists():
            (out / name).write_bytes((zoo_dir / "qwen-tiny" / name).read_bytes())
    return out


@dataclass
class Served:
    url: str
    marked: str
    unmarked: str
    key: int
    """The account's watermark key."""
    detector: Detector


@pytest.fixture(scope="module")
def served(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("watermark-attacks")
    model = hesitant_model(zoo_dir, root / "model")
    database_url = f"sqlite:///{root / 'ledger.db'}"
    billing = Billing(database_url, SECRET)
    try:
        billing.migrate()
        billing.set_price(NAME, 0, 0, 0)
        account = billing.create_account("acme", 10 * MICRO)
        marked = billing.create_key("acme", plan=Plan(**PLAN))[1]  # type: ignore[arg-type]
        unmarked = billing.create_key("acme", plan=Plan(**PLAN, watermark=0))[1]  # type: ignore[arg-type]
    finally:
        billing.close()
    server = LocalServer(None, free_port(), "", database_url, root / "server.log", model_dir=model)
    with running([server]):
        yield Served(
            server.url,
            marked,
            unmarked,
            account_key(SECRET, account),
            Detector.from_model_dir(model),
        )
        server.stop()


def ask(served: Served, key: str, params: dict[str, Any], endpoint: str = "chat") -> list[str]:
    """Every prompt at once (they share batches); every choice's text."""

    def one(i: int) -> list[str]:
        body: dict[str, Any] = {"model": NAME, "max_tokens": MAX_TOKENS, "seed": 100 + i}
        if endpoint == "chat":
            body["messages"] = PROMPTS[i]
        else:
            body["prompt"] = PROMPTS[i][-1]["content"]
        body = {k: v for k, v in (body | params).items() if v is not None}
        r = httpx.post(
            f"{served.url}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert r.status_code == 200, r.text[:500]
        choices = r.json()["choices"]
        assert len(choices) == params.get("n", 1)
        return [c["message"]["content"] if endpoint == "chat" else c["text"] for c in choices]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return [t for texts in pool.map(one, range(len(PROMPTS))) for t in texts]


ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("greedy", {"temperature": 0.0}, "chat"),
    ("default", {}, "chat"),
    ("tiny-top-p", {"temperature": 1.0, "top_p": 1e-9}, "chat"),
    ("small-top-p", {"temperature": 1.0, "top_p": 0.1}, "chat"),
    ("half-top-p", {"temperature": 1.0, "top_p": 0.5}, "chat"),
    ("tiny-temperature", {"temperature": 1e-6}, "chat"),
    ("low-temperature", {"temperature": 0.01}, "chat"),
    ("tiny-both", {"temperature": 1e-6, "top_p": 1e-9}, "chat"),
    ("hot-top-p", {"temperature": 2.0, "top_p": 0.3}, "chat"),
    ("n-choices", {"temperature": 0.7, "top_p": 0.05, "n": 3}, "chat"),
    ("no-seed", {"temperature": 1.0, "top_p": 1e-9, "seed": None}, "chat"),
    ("logprobs", {"top_p": 1e-9, "logprobs": True, "top_logprobs": 5}, "chat"),
    ("completions", {"temperature": 1.0, "top_p": 1e-9}, "completions"),
    ("completions-logprobs", {"temperature": 0.01, "logprobs": 5}, "completions"),
]


def test_unwatermarked_answers_are_not_flagged(served: Served) -> None:
    """The statistic's other side: the ``--watermark 0`` key's answers, greedy and with the
    tiny top_p, are not flagged under the account's key."""
    for params in ({"temperature": 0.0}, {"temperature": 1.0, "top_p": 1e-9}):
        score = served.detector.score(ask(served, served.unmarked, params), served.key)
        assert score.scored >= 100, score
        assert score.p_value > UNMARKED_P, (params, score)


@pytest.mark.parametrize(
    ("params", "endpoint"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_every_sampling_parameter_keeps_the_watermark(
    served: Served, params: dict[str, Any], endpoint: str
) -> None:
    answers = ask(served, served.marked, params, endpoint)
    score = served.detector.score(answers, served.key)
    assert score.scored >= 100, score
    assert score.p_value < MARKED_P, (params, score)
