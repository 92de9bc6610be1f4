"""Fixtures of the watermark tests: one in-process engine over the zoo's qwen-tiny for the whole
session, and a model that hesitates everywhere (for the API and CLI tests).

``AVOCADO_TEST_DEVICE=cuda`` puts the engine on a GPU (``make test-gpu``): the same tests then
hold the GPU's watermark path (tensor operations, bf16 model) to the same outcomes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from watermark_helpers import MODEL

from avocado_llm.serve.local_engine import LocalEngine


@pytest.fixture(scope="session")
def engine(zoo_dir: Path) -> Iterator[LocalEngine]:
    threads = torch.get_num_threads()
    device = os.environ.get("AVOCADO_TEST_DEVICE", "cpu")
    engine = LocalEngine(
        zoo_dir / MODEL, model_name=MODEL, batch_wait_ms=20, threads=1, device=device
    )
    yield engine
    asyncio.run(engine.aclose())
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def uncertain_model(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that hesitates everywhere: qwen-tiny's architecture and tokenizer with freshly
    initialised (seeded) weights, so every position has high entropy and the default,
    entropy-gated watermark acts on every token. (The zoo's teachers are too sure of
    themselves for that; the tiny world's own numbers come from bench/radioactivity.py.)"""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("uncertain-model")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(zoo_dir / MODEL)
    config.initializer_range = 0.1  # answers that depend on the prompt, entropy ~6 nats
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(zoo_dir / MODEL).save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (zoo_dir / MODEL / name).exists():
            (out / name).write_bytes((zoo_dir / MODEL / name).read_bytes())
    return out
