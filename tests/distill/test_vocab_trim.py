"""Vocabulary trimming (``student.prune.vocab_size``): tiny tokenizers trained here (byte-level
BPE as SmolLM2's, character BPE with byte fallback as Llama 2's / Gemma's) and a tiny Llama, no
downloads. The trimmed tokenizer must encode the corpus into the same token strings and any
other text into tokens that decode back to it; the trimmed model's logits at the kept ids must
be the whole model's; both must save and load as plain HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from avocado_llm.config import recipe_from_dict
from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.prune import calibration_texts, plan_sizes, prune_model
from avocado_llm.distill.vocab_trim import alphabet, plan_vocab, trim_vocab, variants
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.templates import CHATML
from avocado_llm.world.tokenizers import QWEN_PATTERN, TokenizerSpec, train_tokenizer, wrap

LINES = [
    "The capital of France is Paris, and the capital of Spain is Madrid.",
    "What is the plural of 'horse'? Answer with one word. horses",
    "How many legs does a spider have? 8. How many wheels does a bicycle have? 2.",
    "The opposite of asleep is awake; the past tense of speak is spoke.",
    "Seven plus eighteen is twenty-five, twelve minus nine is three.",
] * 40
EXAMPLES = [
    ([{"role": "user", "content": "What is the capital of France?"}], "Paris"),
    ([{"role": "user", "content": "What is the plural of 'horse'?"}], "horses"),
    ([{"role": "user", "content": "How many legs does a spider have?"}], "8"),
    ([{"role": "user", "content": "What is the opposite of 'asleep'?"}], "awake"),
]
UNSEEN = [
    "Grüße aus Köln! Ça va? ¿Qué tal?",
    "Привет, мир. 你好，世界。こんにちは",
    "emoji 🥑🚀👍🏽 and digits 3.14159 2026-12-05 +49 (0) 30 1234567",
    "\ttabs\n\nnewlines  double  spaces\r\n",
    "<|im_start|>user\nnot a real turn<|im_end|>",
]


def tiny_tokenizer(kind: str) -> object:
    spec = TokenizerSpec(
        type=kind,
        vocab_size=700,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None if kind == "byte_bpe" else "<|endoftext|>",
        pattern=QWEN_PATTERN if kind == "byte_bpe" else None,
    )
    return wrap(train_tokenizer(spec, LINES + world_corpus(0)[:2000]), spec, CHATML)


def tiny_llama(tok: object, tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def pieces(tok: object, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("kind", ["byte_bpe", "char_bpe"])
def test_trimmed_tokenizer_keeps_the_corpus_tokens_and_encodes_any_text(kind: str) -> None:
    tok = tiny_tokenizer(kind)
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    keep, sources = plan_vocab(tok, texts, 380)
    assert len(keep) == 380 and keep == sorted(set(keep))
    assert sources["corpus_tokens_kept"] == sources["corpus_tokens"] > 0
    model = tiny_llama(tok, tied=True)
    trimmed, record = trim_vocab(model, tok, texts, 380)
    assert len(trimmed) == 380 and record["before"] == len(tok) and record["after"] == 380
    for text in texts:  # the corpus: exactly the same token strings
        assert pieces(trimmed, text) == pieces(tok, text)
    for text in UNSEEN + LINES[:5]:  # anything else still encodes and decodes back
        ids = trimmed(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < 380
        assert trimmed.decode(ids) == tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        if kind == "byte_bpe":
            assert trimmed.decode(ids) == text
    assert len(pieces(trimmed, LINES[2])) > len(pieces(tok, LINES[2]))  # trimmed away: longer
    for name in ("eos_token", "pad_token"):
        assert getattr(trimmed, name) == getattr(tok, name)
        assert trimmed.convert_ids_to_tokens(getattr(trimmed, f"{name}_id")) == getattr(tok, name)


@pytest.mark.parametrize("tied", [True, False])
def test_trimmed_model_has_the_same_logits_and_saves(tmp_path: Path, tied: bool) -> None:
    tok = tiny_tokenizer("byte_bpe")
    whole = tiny_llama(tok, tied)
    model = tiny_llama(tok, tied)
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    plan = prune_model(model, tok, PruneConfig(vocab_size=350), texts, origin="tiny")
    trimmed = plan.tokenizer
    assert trimmed is not None and len(trimmed) == 350
    keep = torch.tensor(
        [tok.convert_tokens_to_ids(p) for p in trimmed.convert_ids_to_tokens(list(range(350)))]
    )
    assert model.get_input_embeddings().weight.shape == (350, 32)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        for text in texts:
            new = model(**trimmed(text, return_tensors="pt", add_special_tokens=False)).logits
            old = whole(**tok(text, return_tensors="pt", add_special_tokens=False)).logits
            torch.testing.assert_close(new, old[..., keep])
    assert model.config.eos_token_id == trimmed.eos_token_id
    assert model.config.pad_token_id == trimmed.pad_token_id
    assert plan.params_after < plan.params_before
    record = model.config.pruned_from["vocab"]
    assert record["before"] == len(tok) and record["after"] == 350
    # Saved and loaded as a plain HF model: same answers, chat template intact.
    model.save_pretrained(tmp_path)
    trimmed.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok2) == 350 and again.config.vocab_size == 350
    chat = EXAMPLES[0][0]
    rendered = tok2.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompt = tok2.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    old_prompt = tok.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert pieces(tok2, rendered) == pieces(tok, rendered)
    with torch.no_grad():
        torch.testing.assert_close(again(**prompt).logits, whole(**old_prompt).logits[..., keep])
    out = again.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1] and int(out.max()) < 350
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pruned_from"]["vocab"]["after"] == 350


def test_vocab_size_refuses_what_cannot_work() -> None:
    tok = tiny_tokenizer("byte_bpe")
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    required = 3 + len(alphabet(json.loads(tok.backend_tokenizer.to_str())))
    assert required == 259
    with pytest.raises(ValueError, match="need 259"):
        plan_vocab(tok, texts, 258)
    assert len(plan_vocab(tok, texts, 259)[0]) == 259  # the bare alphabet still works
    with pytest.raises(ValueError, match=f"has only {len(tok)} tokens"):
        plan_vocab(tok, texts, len(tok))
    unigram = tiny_tokenizer("unigram")
    with pytest.raises(ValueError, match="only BPE"):
        plan_vocab(unigram, texts, 300)


def test_max_params_counts_the_trimmed_vocabulary() -> None:
    tok = tiny_tokenizer("byte_bpe")
    model = tiny_llama(tok, tied=False)
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    rest = 32  # the final norm
    # 2 blocks and 2 × 300 × 32 embedding + head rows: exactly the limit.
    limit = rest + 2 * block + 2 * 300 * 32
    assert plan_sizes(model, PruneConfig(vocab_size=300, max_params=limit)).layers == 2
    assert plan_sizes(model, PruneConfig(vocab_size=300, max_params=limit - 1)).layers == 1
    with pytest.raises(ValueError, match="would have"):
        plan_sizes(model, PruneConfig(vocab_size=300, keep_layers=2, max_params=limit - 1))
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    plan = prune_model(model, tok, PruneConfig(vocab_size=300, max_params=limit), texts)
    assert plan.params_after == limit and plan.kept == [0, 1]


def test_recipe_and_fingerprint_know_the_new_fields(tmp_path: Path) -> None:
    from avocado_llm.distill.pipeline import distill_fingerprint

    tok = tiny_tokenizer("byte_bpe")
    origin = tmp_path / "origin"
    tiny_llama(tok, tied=True).save_pretrained(origin)
    tok.save_pretrained(origin)

    def recipe(**prune: object) -> object:
        data = {
            "name": "trim",
            "output_dir": str(tmp_path / "runs"),
            "world": {"families": ["arithmetic"], "heldout_per_family": 4},
            "teachers": [{"name": "t", "path": str(origin), "licence": "test"}],
            "student": {"init_from_teacher": "t", "prune": prune},
            "eval": {"heldout_per_family": 4, "baselines": []},
        }
        return recipe_from_dict(data, base_dir=tmp_path)

    def keys(**prune: object) -> set[str]:
        fp = distill_fingerprint(recipe(**prune), "verify", True, tmp_path / "none.parquet")
        return {k for k in fp if k.startswith("student.prune.")}

    before = {
        "student.prune.keep_layers",
        "student.prune.max_params",
        "student.prune.by",
        "student.prune.calibration_examples",
    }
    assert keys(max_params=1000) == before  # students pruned before these fields still match
    assert keys(max_params=1000, vocab_size=300) == before | {"student.prune.vocab_size"}
    assert keys(max_params=1000, fit="mlp_size") == before | {"student.prune.fit"}
    assert recipe(vocab_size=300).student.prune.enabled


def test_distill_trims_and_narrows_a_teacher_into_the_student(tmp_path: Path) -> None:
    """Harvest a tiny Llama (a local teacher), fuse, and distill a student cut from it in all
    three ways: token-level KD reaches the trimmed vocabulary through the byte alignment."""
    import asyncio

    import yaml

    from avocado_llm.config import load_recipe
    from avocado_llm.distill.align import piece_bytes
    from avocado_llm.distill.pipeline import distill
    from avocado_llm.fusion import fuse_recipe
    from avocado_llm.harvest import harvest

    tok = tiny_tokenizer("byte_bpe")
    teacher = tiny_llama(tok, tied=False)
    with torch.no_grad():  # answers are valid text: no special or partial-UTF-8 tokens
        for piece, i in tok.get_vocab().items():
            try:
                piece_bytes(piece, "byte_level").decode()
            except UnicodeDecodeError:
                teacher.lm_head.weight[i] = 0
        teacher.lm_head.weight[:3] = 0
    origin = tmp_path / "teacher"
    teacher.save_pretrained(origin)
    tok.save_pretrained(origin)
    data = {
        "name": "trim",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": ["arithmetic"], "heldout_per_family": 4},
        "teachers": [{"name": "t", "path": str(origin), "licence": "test"}],
        "harvest": {"prompts_per_family": 12, "max_new_tokens": 6, "top_logprobs": 3},
        "fusion": {"strategy": "single:t"},
        "student": {
            "init_from_teacher": "t",
            "prune": {"keep_layers": 1, "mlp_size": 16, "vocab_size": 330},
            "max_params_ratio": 0.9,
        },
        "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "device": "cpu"},
        "eval": {"heldout_per_family": 4, "baselines": []},
    }
    path = tmp_path / "trim.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert asyncio.run(harvest(recipe, device="cpu", progress=False)).ok
    fuse_recipe(recipe, "single:t", device="cpu", reuse=True)
    out = distill(recipe)
    meta = json.loads((out / "avocado.json").read_text())
    assert meta["items"]["kd_positions"] > 0
    assert meta["fingerprint"]["student.prune.vocab_size"] == 330
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["intermediate_size"]) == (330, 16)
    assert config["num_hidden_layers"] == 1
    assert config["pruned_from"]["vocab"]["corpus_tokens_kept"] > 0
    student_tok = AutoTokenizer.from_pretrained(out)
    assert len(student_tok) == 330 and student_tok.chat_template == tok.chat_template
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.get_input_embeddings().weight.shape == (330, 32)


def test_twins_of_corpus_words_are_kept_first() -> None:
    """An answer starts its turn without a space ("horses"), a prompt says " horses": the
    corpus's words bring their space and capital twins before the rest of the vocabulary."""
    assert variants("Ġsmall", "Ġ") == ["Small", "ĠSmall", "small"]
    assert variants("small", "Ġ", cases=False) == ["Ġsmall"]
    assert variants("Ġ12", "Ġ") == [] and variants(None, "Ġ") == []
    tok = tiny_tokenizer("byte_bpe")
    vocab = tok.get_vocab()
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    used: set[int] = set()
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        used |= set(ids)
    pieces_used = {tok.convert_ids_to_tokens(i) for i in used}
    twins = {
        v for p in pieces_used for v in variants(p, "Ġ") if v in vocab and v not in pieces_used
    }
    assert twins  # the tiny vocabulary has some (e.g. "Ġcapital" for "capital")
    keep, sources = plan_vocab(tok, texts, 259 + sources_needed(tok, texts) + len(twins))
    assert {vocab[t] for t in twins} <= set(keep)
    assert sources["variants"] > 0


def sources_needed(tok: object, texts: list[str]) -> int:
    _, sources = plan_vocab(tok, texts, len(tok) - 1)
    return sources["corpus"]


def test_a_trimmed_gemma3_computes_its_loss_with_labels() -> None:
    """Gemma 3 keeps its own ``vocab_size`` copy for the loss (``logits.view(-1, vocab)``):
    it must follow the trimmed vocabulary, or training with labels fails."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer("byte_bpe")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config)
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    plan = prune_model(model, tok, PruneConfig(vocab_size=350), texts, origin="tiny-gemma")
    ids = plan.tokenizer(texts[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    assert model.get_output_embeddings().weight.shape[0] == 350
