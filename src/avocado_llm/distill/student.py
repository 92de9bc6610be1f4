"""The student: a new small model with its own tokenizer, or one initialised from a directory.

A new student gets a tokenizer trained on the world's text with an algorithm no teacher uses
(Llama-2-style character BPE by default), and the Llama 2 ``[INST]`` chat template, so that
distillation always crosses tokenizers. A student can instead start from a model directory
(``student.init_from``) or from a teacher's (``student.init_from_teacher``), keeping its
tokenizer and chat template, and be pruned first (``student.prune``: blocks, MLP width,
vocabulary; :mod:`avocado_llm.distill.prune`). Its size is checked against the smallest teacher.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from avocado_llm.config import Recipe, StudentConfig
from avocado_llm.distill.prune import calibration_texts, prune_model
from avocado_llm.harvest.files import fsync_dir
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.templates import STUDENT
from avocado_llm.world.tokenizers import TokenizerSpec, train_tokenizer, wrap

STUDENT_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")


def student_tokenizer(cfg: StudentConfig, corpus: list[str]) -> PreTrainedTokenizerBase:
    spec = TokenizerSpec(
        type=cfg.tokenizer_type,
        vocab_size=cfg.vocab_size,
        special_tokens=STUDENT_SPECIAL,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return wrap(train_tokenizer(spec, corpus), spec, STUDENT)


@functools.lru_cache(maxsize=2)
def _world_text(seed: int) -> tuple[str, ...]:
    """The world's text for the student tokenizer, made once per seed and process (seconds):
    a run trains the student and its baselines on the same tokenizer text."""
    return tuple(world_corpus(seed))


def world_text(seed: int) -> list[str]:
    """The world's text for the student tokenizer (made once per seed and process)."""
    return list(_world_text(seed))


def student_origin(recipe: Recipe) -> Path | None:
    """The model directory the student starts from: ``init_from``, or the model directory of
    the teacher ``init_from_teacher`` names (``None``: a new student)."""
    cfg = recipe.student
    if cfg.init_from_teacher is None:
        return cfg.init_from
    from avocado_llm.teachers import teacher_path

    teacher = next((t for t in recipe.teachers if t.name == cfg.init_from_teacher), None)
    if teacher is None:
        raise ValueError(f"student.init_from_teacher: no teacher {cfg.init_from_teacher!r}")
    path = teacher_path(teacher, recipe)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"student.init_from_teacher: teacher {teacher.name!r} has no model directory at "
            f"{path} (a Hugging Face directory with config.json); write it first (e.g. "
            "`avocado models import`), or set student.init_from to one"
        )
    return path


def build_student(
    cfg: StudentConfig,
    seed: int = 0,
    corpus: list[str] | None = None,
    *,
    origin: Path | None = None,
    examples: Sequence[tuple[list[dict[str, str]], str]] = (),
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A student from the recipe: loaded from ``origin`` (default ``init_from``) and pruned as
    ``cfg.prune`` says, its block influence measured on ``examples`` ((messages, answer) pairs
    of the fused harvest); or new (tokenizer trained now)."""
    origin = origin if origin is not None else cfg.init_from
    if origin is not None:
        tok = AutoTokenizer.from_pretrained(origin, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            origin, trust_remote_code=False, dtype=torch.float32
        )
        if not tok.chat_template:
            tok.chat_template = STUDENT
        if tok.pad_token is None:  # batches need one; it is never a label
            tok.pad_token = tok.eos_token
        if cfg.prune.enabled:
            texts = calibration_texts(tok, examples, cfg.prune.calibration_examples, seed)
            # The vocabulary keeps the tokens of every fused example, not just the sample.
            corpus = (
                calibration_texts(tok, examples, len(examples), seed)
                if cfg.prune.vocab_size is not None
                else None
            )
            plan = prune_model(model, tok, cfg.prune, texts, origin=origin.name, corpus=corpus)
            tok = plan.tokenizer or tok
        return model, tok
    text = corpus if corpus is not None else list(_world_text(seed))
    # The template's markers are plain text in Llama 2's dialect: let the tokenizer learn them.
    tok = student_tokenizer(cfg, [*text, *["[INST] [/INST]"] * 500])
    common = {
        "vocab_size": len(tok),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    torch.manual_seed(seed)
    if cfg.architecture == "qwen3":
        model: PreTrainedModel = Qwen3ForCausalLM(
            Qwen3Config(**common, head_dim=cfg.hidden_size // cfg.num_heads)
        )
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    return model, tok


def n_params(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def check_size(model: PreTrainedModel, teacher_params: dict[str, int], ratio: float) -> None:
    """Refuse a student larger than ``ratio`` × the smallest (local) teacher."""
    if not teacher_params:
        return
    smallest = min(teacher_params, key=teacher_params.__getitem__)
    limit = int(ratio * teacher_params[smallest])
    size = n_params(model)
    if size > limit:
        raise ValueError(
            f"the student has {size:,} parameters, more than {ratio:g} × {smallest} "
            f"({teacher_params[smallest]:,}) = {limit:,}. Fix: shrink student.hidden_size, "
            "num_layers, intermediate_size or vocab_size, prune more (student.prune."
            "keep_layers or max_params), or raise student.max_params_ratio"
        )


def save_student(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path) -> None:
    """Save into a fresh folder inside ``out``, then rename each file into place: a symbolic
    link planted in ``out`` (``config.json`` → elsewhere) is replaced, never written through."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".save-", dir=out))
    try:
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
