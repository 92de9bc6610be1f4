"""Depth pruning (``student.prune``): a tiny random Llama (made here, no downloads) with a
byte-level BPE tokenizer and ChatML template, SmolLM2's shape in miniature, is cut by block
influence; blocks made into identities must be the ones dropped, and the pruned model must
compute exactly what the whole one did. Then a real harvest / fusion / distill from that model
as a local teacher, with ``init_from_teacher`` and ``prune``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from avocado_llm.config import RecipeError, load_recipe, recipe_from_dict
from avocado_llm.config.fields import describe
from avocado_llm.config.schema import Recipe
from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.align import piece_bytes
from avocado_llm.distill.pipeline import distill
from avocado_llm.distill.prune import (
    block_influence,
    blocks_to_keep,
    calibration_texts,
    layers_to_keep,
    prune_model,
)
from avocado_llm.distill.student import build_student, student_origin
from avocado_llm.fusion import fuse_recipe
from avocado_llm.harvest import harvest
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.templates import CHATML
from avocado_llm.world.tokenizers import QWEN_PATTERN, TokenizerSpec, train_tokenizer, wrap

LAYERS = 6
IDENTITY = (1, 4)
"""Blocks turned into identities (their attention and MLP outputs zeroed)."""


def make_tiny_llama(out: Path, layers: int = LAYERS, identity: tuple[int, ...] = IDENTITY) -> Path:
    spec = TokenizerSpec(
        type="byte_bpe",
        vocab_size=600,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        pattern=QWEN_PATTERN,
    )
    tok = wrap(train_tokenizer(spec, world_corpus(0)[:3000]), spec, CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Special tokens and pieces that are not whole UTF-8 get logit 0, below the best
        # random one: answers are never empty and always valid text.
        for piece, i in tok.get_vocab().items():
            try:
                piece_bytes(piece, "byte_level").decode()
            except UnicodeDecodeError:
                model.lm_head.weight[i] = 0
        model.lm_head.weight[: len(spec.special_tokens)] = 0
        for i in identity:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


EXAMPLES = [
    ([{"role": "user", "content": f"What is {a} plus {b}?"}], f"The answer is {a + b}.")
    for a in range(3, 9)
    for b in range(2, 5)
]


def load(path: Path) -> tuple[LlamaForCausalLM, object]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def test_block_influence_finds_the_identity_blocks(llama_dir: Path) -> None:
    model, tok = load(llama_dir)
    texts = calibration_texts(tok, EXAMPLES, 8)
    assert len(texts) == 8 and all("<|im_start|>assistant\nThe answer is" in t for t in texts)
    influence = block_influence(model, tok, texts)
    assert len(influence) == LAYERS
    for i in IDENTITY:
        assert influence[i] == pytest.approx(0.0, abs=1e-6)
    assert min(influence[i] for i in range(LAYERS) if i not in IDENTITY) > 1e-3
    assert layers_to_keep(influence, LAYERS, 4, "block_influence") == [0, 2, 3, 5]
    assert layers_to_keep(influence, LAYERS, 4, "last") == [0, 1, 2, 5]
    assert layers_to_keep(influence, LAYERS, LAYERS, "last") == list(range(LAYERS))


def test_pruned_model_computes_what_the_whole_one_did(llama_dir: Path, tmp_path: Path) -> None:
    whole, tok = load(llama_dir)
    pruned, _ = load(llama_dir)
    plan = prune_model(pruned, tok, PruneConfig(keep_layers=4), calibration_texts(tok, EXAMPLES, 8))
    assert plan.kept == [0, 2, 3, 5]
    assert plan.params_after < plan.params_before
    assert pruned.config.num_hidden_layers == 4
    prompt = tok.apply_chat_template(
        EXAMPLES[0][0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        torch.testing.assert_close(pruned(**prompt).logits, whole(**prompt).logits)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tok.pad_token_id}
    expected = whole.generate(**prompt, **kwargs)  # with the KV cache: renumbered slots
    assert torch.equal(pruned.generate(**prompt, **kwargs), expected)
    # Saved, it is a plain HF model: fewer blocks, same answers, provenance in config.json.
    pruned.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load(tmp_path)
    assert len(again.model.layers) == 4
    assert torch.equal(again.generate(**prompt, **kwargs), expected)
    record = json.loads((tmp_path / "config.json").read_text())["pruned_from"]
    assert record["kept_layers"] == [0, 2, 3, 5] and record["origin_layers"] == LAYERS


def test_max_params_keeps_what_fits(llama_dir: Path) -> None:
    model, _ = load(llama_dir)
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    fixed = total - LAYERS * block
    assert blocks_to_keep(model, PruneConfig(max_params=fixed + 3 * block)) == 3
    assert blocks_to_keep(model, PruneConfig(max_params=fixed + 3 * block - 1)) == 2
    assert blocks_to_keep(model, PruneConfig(max_params=total * 2, keep_layers=5)) == 5
    with pytest.raises(ValueError, match="embeddings, norms and head alone"):
        blocks_to_keep(model, PruneConfig(max_params=fixed))
    with pytest.raises(ValueError, match="has only 6 blocks"):
        blocks_to_keep(model, PruneConfig(keep_layers=7))


def recipe_dict(tmp: Path, llama: Path, **student: object) -> dict:
    return {
        "name": "prune",
        "output_dir": str(tmp / "runs"),
        "world": {"families": ["arithmetic"], "heldout_per_family": 4},
        "teachers": [{"name": "smol-tiny", "path": str(llama), "licence": "test"}],
        "harvest": {"prompts_per_family": 12, "max_new_tokens": 6, "top_logprobs": 3},
        "fusion": {"strategy": "single:smol-tiny"},
        "student": student,
        "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "device": "cpu"},
        "eval": {"heldout_per_family": 4, "baselines": []},
    }


def test_recipe_checks_the_prune_options(tmp_path: Path, llama_dir: Path) -> None:
    def problems(**student: object) -> str:
        with pytest.raises(RecipeError) as error:
            recipe_from_dict(recipe_dict(tmp_path, llama_dir, **student), base_dir=tmp_path)
        return str(error.value)

    assert "pruning needs a model to start from" in problems(prune={"keep_layers": 2})
    assert "no teacher 'nobody'" in problems(init_from_teacher="nobody")
    assert "init_from is set too" in problems(
        init_from=str(llama_dir), init_from_teacher="smol-tiny"
    )
    assert "must be >= 1" in problems(init_from_teacher="smol-tiny", prune={"keep_layers": 0})
    assert "is not one of" in problems(init_from_teacher="smol-tiny", prune={"by": "random"})
    recipe = recipe_from_dict(
        recipe_dict(tmp_path, llama_dir, init_from_teacher="smol-tiny", prune={"keep_layers": 2}),
        base_dir=tmp_path,
    )
    assert isinstance(recipe, Recipe) and student_origin(recipe) == llama_dir
    text = describe(Recipe)  # `avocado recipe explain` documents every option
    for key in ("student.init_from_teacher", "student.prune.keep_layers", "prune.max_params"):
        assert key in text
    # The origin may not exist yet when the recipe is checked, only when the student is built.
    missing = recipe_dict(tmp_path, tmp_path / "later", init_from_teacher="smol-tiny")
    missing["teachers"][0]["zoo"] = True
    late = recipe_from_dict(missing, base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="has no model directory"):
        student_origin(late)


def test_distill_prunes_a_teacher_into_the_student(tmp_path: Path, llama_dir: Path) -> None:
    """Harvest the tiny Llama (a local teacher), fuse, and distill a student cut from it:
    its tokenizer is the teacher's, so the teacher's top-k maps one to one onto its ids."""
    path = tmp_path / "prune.yaml"
    student = {
        "init_from_teacher": "smol-tiny",
        "prune": {"keep_layers": 4},
        "max_params_ratio": 0.8,
    }
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, llama_dir, **student)))
    recipe = load_recipe(path)
    assert asyncio.run(harvest(recipe, device="cpu", progress=False)).ok
    fuse_recipe(recipe, "single:smol-tiny", device="cpu", reuse=True)
    out = distill(recipe)
    meta = json.loads((out / "avocado.json").read_text())
    assert meta["items"]["kd_positions"] > 0 and meta["items"]["kd_dropped"] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert config["pruned_from"]["kept_layers"] == [0, 2, 3, 5]
    assert config["pruned_from"]["origin"] == llama_dir.name
    assert meta["fingerprint"]["student.prune.keep_layers"] == 4
    assert meta["fingerprint"]["input:init_from"].startswith("sha256:")
    student_tok = AutoTokenizer.from_pretrained(out)
    teacher_tok = AutoTokenizer.from_pretrained(llama_dir)
    assert student_tok.get_vocab() == teacher_tok.get_vocab()
    assert student_tok.chat_template == teacher_tok.chat_template


def test_an_unpruned_recipe_keeps_its_fingerprint(tmp_path: Path, llama_dir: Path) -> None:
    """Students trained before prune existed are not made stale by its (default) fields."""
    from avocado_llm.distill.pipeline import distill_fingerprint

    recipe = recipe_from_dict(recipe_dict(tmp_path, llama_dir), base_dir=tmp_path)
    fp = distill_fingerprint(recipe, "verify", True, tmp_path / "none.parquet")
    assert not [k for k in fp if k.startswith("student.prune") or "init_from_teacher" in k]


def test_build_student_without_examples_refuses_block_influence(
    tmp_path: Path, llama_dir: Path
) -> None:
    student = {"init_from_teacher": "smol-tiny", "prune": {"keep_layers": 2}}
    recipe = recipe_from_dict(recipe_dict(tmp_path, llama_dir, **student), base_dir=tmp_path)
    with pytest.raises(ValueError, match="needs calibration text"):
        build_student(recipe.student, origin=student_origin(recipe))
    model, _ = build_student(recipe.student, origin=student_origin(recipe), examples=EXAMPLES)
    assert len(model.model.layers) == 2


def test_a_vllm_served_teacher_is_aligned_as_text(tmp_path: Path, llama_dir: Path) -> None:
    """vLLM sends each token decoded on its own (" Zürich"), not the vocabulary's pieces
    ("ĠZ", "Ã¼"): an engine: vllm teacher's tokens are text, whatever its tokenizer.json."""
    from avocado_llm.distill.pipeline import teacher_kinds

    data = recipe_dict(tmp_path, llama_dir)
    data["teachers"].append({**data["teachers"][0], "name": "served", "engine": "vllm"})
    kinds = teacher_kinds(recipe_from_dict(data, base_dir=tmp_path))
    assert kinds == {"smol-tiny": "byte_level", "served": "text"}
