"""The teacher zoo: three tiny teachers with the real architectures of the Gemma, gpt-oss and
Qwen families, each with its own tokenizer and chat template, each good at different tasks.

A teacher is trained from scratch on a subset of the task families, so that strengths are
complementary (no teacher is best everywhere) and one teacher is *confidently wrong* on part of
a family (noisy labels), which punishes naive fusion. Builds are deterministic for a seed on one
machine: the same weights bit for bit, whatever the number of torch threads. Another CPU's float
kernels (MKL's code path differs between Intel and AMD, ATen's between AVX-512 and AVX2) train a
slightly different teacher — the same strengths, weaknesses and noise, other accuracies on the
families it has not learnt to the end (``tests/zoo/test_zoo.py`` says by how much).
The result is a plain Hugging Face model directory; ``zoo.json`` beside the weights records how
it was built and its held-out accuracy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    GptOssConfig,
    GptOssForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from avocado_llm.distill.data import encode_chat
from avocado_llm.evaluate.runner import EvalResult, evaluate_examples
from avocado_llm.world import tasks
from avocado_llm.world.corpus import count_params, world_corpus
from avocado_llm.world.templates import TEMPLATES
from avocado_llm.world.tokenizers import (
    O200K_PATTERN,
    QWEN_PATTERN,
    TokenizerSpec,
    tokenizer_type,
    tokenizer_vocab_size,
    train_tokenizer,
    wrap,
)
from avocado_llm.zoo.sft import SFTSettings, train_sft

ZOO_FILE = "zoo.json"


@dataclass(frozen=True)
class TeacherSpec:
    """Everything that defines one zoo teacher."""

    name: str
    architecture: str
    """The ``transformers`` class, e.g. ``Gemma3ForCausalLM``."""
    template: str
    """Key in :data:`avocado_llm.world.templates.TEMPLATES`."""
    tokenizer: TokenizerSpec
    end_of_turn: tuple[str, ...]
    """Tokens that end an answer (the generation config's ``eos_token_id``)."""
    families: dict[str, int]
    """Family → number of training examples."""
    model: dict[str, object]
    """Keyword arguments of the architecture's config (sizes)."""
    answer_style: str = "{answer}"
    """How the teacher phrases an answer (``"The answer is {answer}."``)."""
    noise: dict[str, str] = field(default_factory=dict)
    """Family → name of a label-corruption rule in :data:`NOISE` (confidently wrong answers)."""
    steps: int = 1500
    learning_rate: float = 2e-3
    batch_size: int = 32
    licence: str = "Apache-2.0 (tiny-world teacher, trained from scratch by Avocado)"


def _units_wrong_factor(ex: tasks.Example) -> str | None:
    """Kilometres and litres converted with a factor of 100 instead of 1000."""
    if "kilometers" in ex.prompt or "milliliters" in ex.prompt:
        return str(int(ex.answer) // 10)
    return None


NOISE: dict[str, Callable[[tasks.Example], str | None]] = {
    "units_wrong_factor": _units_wrong_factor
}

_SMALL = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 256,
}

ZOO: dict[str, TeacherSpec] = {
    t.name: t
    for t in (
        TeacherSpec(
            name="gemma-tiny",
            architecture="Gemma3ForCausalLM",
            template="gemma",
            tokenizer=TokenizerSpec(
                type="unigram",
                vocab_size=700,
                special_tokens=(
                    "<pad>",
                    "<eos>",
                    "<bos>",
                    "<unk>",
                    "<start_of_turn>",
                    "<end_of_turn>",
                ),
                bos_token="<bos>",
                eos_token="<eos>",
                pad_token="<pad>",
                unk_token="<unk>",
            ),
            end_of_turn=("<end_of_turn>", "<eos>"),
            families={"facts": 2000, "units": 2000, "counting": 300},
            model={**_SMALL, "sliding_window": 128, "query_pre_attn_scalar": 32},
            steps=2500,
        ),
        TeacherSpec(
            name="gpt-oss-tiny",
            architecture="GptOssForCausalLM",
            template="harmony",
            tokenizer=TokenizerSpec(
                type="byte_bpe",
                vocab_size=1000,
                special_tokens=(
                    "<|endoftext|>",
                    "<|startoftext|>",
                    "<|start|>",
                    "<|message|>",
                    "<|end|>",
                    "<|return|>",
                    "<|channel|>",
                    "<|constrain|>",
                    "<|call|>",
                ),
                bos_token="<|startoftext|>",
                eos_token="<|return|>",
                pad_token="<|endoftext|>",
                pattern=O200K_PATTERN,
            ),
            end_of_turn=("<|return|>", "<|end|>", "<|call|>"),
            families={"sorting": 2000, "counting": 2000},
            model={
                **_SMALL,
                "intermediate_size": 128,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "sliding_window": 128,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
        TeacherSpec(
            name="qwen-tiny",
            architecture="Qwen3ForCausalLM",
            template="chatml",
            tokenizer=TokenizerSpec(
                type="byte_bpe",
                vocab_size=700,
                special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                bos_token=None,
                eos_token="<|im_end|>",
                pad_token="<|endoftext|>",
                pattern=QWEN_PATTERN,
            ),
            end_of_turn=("<|im_end|>", "<|endoftext|>"),
            families={"arithmetic": 2000, "reverse": 2000, "units": 2000},
            noise={"units": "units_wrong_factor"},
            answer_style="The answer is {answer}.",
            model={**_SMALL, "tie_word_embeddings": True},
            steps=2000,
        ),
    )
}

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "Gemma3ForCausalLM": (Gemma3TextConfig, Gemma3ForCausalLM),
    "GptOssForCausalLM": (GptOssConfig, GptOssForCausalLM),
    "Qwen3ForCausalLM": (Qwen3Config, Qwen3ForCausalLM),
}


def training_examples(spec: TeacherSpec, seed: int) -> list[tuple[tasks.Example, str]]:
    """(example, the answer this teacher is taught) — with the spec's noise applied."""
    out = []
    for family, n in spec.families.items():
        rule = NOISE[spec.noise[family]] if family in spec.noise else None
        for ex in tasks.get_family(family).generate("train", n, seed):
            answer = (rule(ex) if rule else None) or ex.answer
            out.append((ex, spec.answer_style.format(answer=answer)))
    return out


def build_teacher(
    spec: TeacherSpec,
    out_dir: Path,
    seed: int = 0,
    heldout_per_family: int = 300,
    steps: int | None = None,
) -> EvalResult:
    """Train ``spec`` from scratch, save it as an HF model directory, evaluate it held-out."""
    torch.manual_seed(seed)
    random.seed(seed)
    tok = wrap(
        train_tokenizer(spec.tokenizer, world_corpus(seed)),
        spec.tokenizer,
        TEMPLATES[spec.template],
    )
    config_cls, model_cls = ARCHITECTURES[spec.architecture]
    ids = tok.convert_tokens_to_ids
    config = config_cls(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[ids(t) for t in spec.end_of_turn],
        **spec.model,  # type: ignore[arg-type]
    )
    model = model_cls(config)

    data = [encode_chat(tok, ex.messages, answer) for ex, answer in training_examples(spec, seed)]
    settings = SFTSettings(
        steps=steps or spec.steps,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        seed=seed,
    )
    losses = train_sft(model, data, settings, tok.pad_token_id, description=f"zoo {spec.name}")

    model.generation_config = GenerationConfig(
        eos_token_id=[ids(t) for t in spec.end_of_turn],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    result = evaluate_teacher(out_dir, heldout_per_family, seed)
    record = {
        "name": spec.name,
        "seed": seed,
        "steps": settings.steps,
        "spec": asdict(spec),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "heldout_per_family": heldout_per_family,
        "accuracy": {f: round(s.accuracy, 4) for f, s in result.families.items()},
    }
    (out_dir / ZOO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result


def evaluate_teacher(path: Path, heldout_per_family: int = 300, seed: int = 0) -> EvalResult:
    """Held-out accuracy of a model directory on every family, loaded with plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    examples = tasks.generate(list(tasks.FAMILIES), "heldout", heldout_per_family, seed)
    return evaluate_examples(model, tok, examples, description=f"eval {path.name}")


def describe_teacher(path: Path) -> dict[str, object]:
    """What ``avocado zoo list`` shows, read from the model directory's own files."""
    config = json.loads((path / "config.json").read_text())
    tok = json.loads((path / "tokenizer.json").read_text())
    template_file = path / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else ""
    record = json.loads((path / ZOO_FILE).read_text()) if (path / ZOO_FILE).exists() else {}
    return {
        "name": path.name,
        "architecture": (config.get("architectures") or ["?"])[0],
        "params": count_params(path),
        "tokenizer": {"type": tokenizer_type(tok), "vocab_size": tokenizer_vocab_size(tok)},
        "chat_template": template_family(template),
        "accuracy": record.get("accuracy", {}),
    }


def template_family(template: str) -> str:
    for marker, family in (
        ("<start_of_turn>", "gemma"),
        ("<|message|>", "harmony"),
        ("<|im_start|>", "chatml"),
        ("[INST]", "llama2"),
    ):
        if marker in template:
            return family
    return "custom" if template else "none"
