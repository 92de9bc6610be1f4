"""The recipe's student and training sections: the model to train (new, or cut from a teacher)
and how it is trained. Parts of :mod:`avocado_llm.config.schema`'s ``Recipe``."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avocado_llm.config.fields import Check, check_range

MIN_STUDENT_VOCAB = 256 + 4 + 66
"""The smallest vocabulary a new student's tokenizer can have: 256 byte-fallback pieces, 4
special tokens (``<unk> <s> </s> <pad>``) and the 66 characters of the tiny world's text
(space spelled ``▁``). Below it the Unigram trainer fails and the BPE one ignores the size."""


@dataclass(kw_only=True)
class PruneConfig:
    """Pruning of a student that starts from a model (`init_from` or `init_from_teacher`),
    Minitron / ShortGPT style: whole transformer blocks are dropped (depth), each MLP keeps its
    most active neurons (`mlp_size`), and the vocabulary keeps the tokens the task uses
    (`vocab_size`); what is kept keeps its weights, the chat template stays. Off while
    `keep_layers`, `max_params`, `mlp_size` and `vocab_size` are all null."""

    keep_layers: int | None = None
    """Transformer blocks to keep."""
    max_params: int | None = None
    """Keep as many blocks as fit in this many parameters (embeddings included); with
    keep_layers set too, the smaller of the two. With mlp_size or vocab_size set, blocks are
    counted at that width and vocabulary, and a keep_layers that does not fit is refused; see
    fit for sizing the MLP instead."""
    by: Literal["block_influence", "last"] = "block_influence"
    """Which blocks go: block_influence measures each block on calibration_examples fused
    training examples (prompt and answer in the model's chat template) as 1 - the cosine
    similarity of its input and output hidden states, averaged over tokens, and drops the blocks
    that change their input least; last drops the blocks before the final one (a baseline)."""
    calibration_examples: int = 64
    """Fused training examples the block influence and the MLP neurons' activity are measured
    on (a seeded sample)."""
    mlp_size: int | None = None
    """Keep this many intermediate neurons in every block's MLP: those with the largest mean
    |act(gate) * up| on the calibration examples (Llama / Qwen / Gemma-style MLPs)."""
    vocab_size: int | None = None
    """Trim the vocabulary to this many tokens: the special tokens, the 256 byte tokens (any
    text still encodes), the fused examples' tokens most frequent first, then the origin's
    lowest ids, each with the tokens it is merged from. The tokenizer is rewritten with new
    ids and the embedding keeps its rows (BPE tokenizers: byte-level or byte fallback)."""
    fit: Literal["layers", "mlp_size"] = "layers"
    """What max_params sizes: layers keeps as many blocks as fit (the MLP and vocabulary as
    set); mlp_size keeps keep_layers (default all) blocks and the widest MLP that fits (a
    multiple of 8). Either way a student that cannot fit is refused."""

    @property
    def enabled(self) -> bool:
        fields = (self.keep_layers, self.max_params, self.mlp_size, self.vocab_size)
        return any(f is not None for f in fields)

    def check(self) -> list[Check]:
        problems = check_range(self, "calibration_examples", 1)
        for name in ("keep_layers", "max_params", "mlp_size", "vocab_size"):
            if getattr(self, name) is not None:
                problems += check_range(self, name, 1)
        if self.fit == "mlp_size" and self.max_params is None:
            fix = "set max_params, or set mlp_size to a number of neurons"
            problems.append(("fit", "fit: mlp_size sizes the MLP to max_params, unset", fix))
        if self.fit == "mlp_size" and self.mlp_size is not None:
            fix = "remove mlp_size (max_params sizes it), or fit: layers"
            problems.append(("mlp_size", "fit: mlp_size sizes the MLP itself", fix))
        return problems


@dataclass(kw_only=True)
class HealConfig:
    """Healing of a cut student before it learns the task (Minitron / Sheared-LLaMA style): the
    model it was cut from (its parent: init_from or init_from_teacher, whole) writes text, token
    by token from its first token at temperature, within the student's vocabulary, and the
    student learns the parent's whole next-token distribution at every position of it (KL,
    over the student's vocabulary). It gives back some of the general knowledge the cut took.
    Off while tokens is 0. Done once per student directory (kept in its healed/ folder)."""

    tokens: int = 0
    """Tokens of parent text to heal on (sequences of sequence_length, batch_size per step);
    a GPU heals on millions, a CPU on thousands."""
    sequence_length: int = 128
    """Tokens per generated sequence."""
    batch_size: int = 8
    """Sequences per healing step."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate of the healing (linear warmup over a tenth of the steps, then
    cosine decay)."""
    temperature: float = 1.0
    """Sampling temperature of the parent's text (the targets are always its temperature-1
    distributions)."""

    @property
    def enabled(self) -> bool:
        return self.tokens > 0

    def check(self) -> list[Check]:
        return [
            *check_range(self, "tokens", 0),
            *check_range(self, "sequence_length", 2),
            *check_range(self, "batch_size", 1),
            *check_range(self, "learning_rate", 0, 1, low_open=True, high_open=True),
            *check_range(self, "temperature", 0, low_open=True),
        ]


@dataclass(kw_only=True)
class StudentConfig:
    """The model being trained: its architecture and its own tokenizer."""

    init_from: Path | None = None
    """An HF model directory to start from (relative to the recipe's directory); if unset, a new
    model is built from the fields below."""
    init_from_teacher: str | None = None
    """Start from this teacher's weights and tokenizer: the name of a recipe teacher with a
    local model directory (`path`, e.g. one written by `avocado models import`), read when the
    student is built, so it may not exist yet when the recipe is checked. Not with init_from."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning of the starting model before training: blocks, MLP width, vocabulary (needs
    init_from or init_from_teacher)."""
    heal: HealConfig = field(default_factory=HealConfig)
    """Healing of the cut student on its parent's text before the task (needs prune)."""
    architecture: Literal["qwen3", "llama"] = "qwen3"
    """Model family of a newly built student."""
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads per block; must divide hidden_size."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide num_heads."""
    intermediate_size: int = 192
    """Width of the MLP inside each block."""
    tokenizer_type: Literal["char_bpe", "unigram"] = "char_bpe"
    """Algorithm of the student's own tokenizer, trained on the harvest; differs from every
    teacher's, so distillation crosses tokenizers."""
    vocab_size: int = 512
    """Size of the student's vocabulary."""
    max_params_ratio: float = 0.5
    """Largest allowed student size, as a fraction of the smallest teacher's parameter count."""

    def check(self) -> list[Check]:
        names = ["hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"]
        problems = [p for name in names for p in check_range(self, name, 1)]
        problems += check_range(self, "vocab_size", 1) + check_range(
            self, "max_params_ratio", 0, 1, low_open=True
        )
        if self.init_from is None and 1 <= self.vocab_size < MIN_STUDENT_VOCAB:
            problems.append((
                "vocab_size",
                f"{self.vocab_size} is smaller than the student tokenizer's fixed part: 256 "
                f"byte pieces + 4 special tokens + 66 characters = {MIN_STUDENT_VOCAB}",
                f"use at least {MIN_STUDENT_VOCAB} (the default is 512)",
            ))  # fmt: skip
        if self.init_from is not None and not self.init_from.is_dir():
            fix = "fix the path (relative paths start at the recipe's directory), or remove it"
            problems.append(("init_from", f"no such directory: {self.init_from}", fix))
        if self.init_from is not None and self.init_from_teacher is not None:
            fix = "keep one of init_from and init_from_teacher"
            problems.append(("init_from_teacher", "init_from is set too", fix))
        if self.prune.enabled and self.init_from is None and self.init_from_teacher is None:
            fix = "set init_from or init_from_teacher, or remove prune"
            problems.append(("prune", "pruning needs a model to start from", fix))
        if self.heal.enabled and not self.prune.enabled:
            fix = "set prune (a cut to heal), or heal.tokens: 0"
            problems.append(("heal", "healing needs a pruned student (prune)", fix))
        if problems:  # the divisibility rules below need positive sizes
            return problems
        if self.hidden_size % self.num_heads:
            message = (
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
            problems.append(("hidden_size", message, "make hidden_size a multiple of num_heads"))
        if self.num_heads % self.num_kv_heads:
            message = (
                f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}"
            )
            problems.append(("num_kv_heads", message, "make num_kv_heads a divisor of num_heads"))
        return problems


@dataclass(kw_only=True)
class TrainingConfig:
    """Distillation training: optimisation and the loss mix."""

    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per step (before gradient accumulation)."""
    learning_rate: float = 1e-3
    """Peak learning rate of AdamW, after warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup."""
    grad_accum: int = 1
    """Batches accumulated per optimizer step."""
    alpha_ce: float = 0.5
    """Weight of cross-entropy on the fused teacher text; token-level KD gets 1 - alpha_ce."""
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """Token-level distillation loss against the teachers' top-k distributions."""
    jsd_beta: float = 0.5
    """Interpolation of the generalized Jensen-Shannon divergence (kd_loss: jsd)."""
    balance_families: bool = True
    """Draw every task family equally often, whatever its number of examples (a family with few
    prompts, such as facts, is not drowned out); false draws examples uniformly."""
    balance_temperature: float | None = None
    """With balance_families: a family's share of the draws grows as (its examples)^(1/T), as
    multilingual samplers do: 1 is proportional to its fused examples, larger T moves toward equal
    shares; null (the default) gives every family exactly the same share."""
    family_weights: dict[str, float] = field(default_factory=dict)
    """Relative weights of the draws, by task family or source name (unlisted: 1): a family of
    weight 3 is drawn three times as often as it would be, e.g. a source that mixes three skills,
    or 0.5 for an open-ended source with unverified answers. Applies on top of balance_families
    (equal shares times the weights) or, with it false, to every example of the family."""
    eval_every: int = 0
    """Evaluate on held-out prompts every this many steps; 0 only at the end."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint (model, optimizer, scheduler, RNG, step) every this many
    steps; `avocado distill --resume` continues from the latest."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk, the newest (each holds the model and its optimizer state: about
    3 times the weights); 0 keeps every one."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps; auto picks a GPU when there is one."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Numeric precision of training."""

    def check(self) -> list[Check]:
        problems = [
            *check_range(self, "steps", 1),
            *check_range(self, "batch_size", 1),
            *check_range(self, "learning_rate", 0, 1, low_open=True, high_open=True),
            *check_range(self, "weight_decay", 0),
            *check_range(self, "warmup_steps", 0),
            *check_range(self, "grad_accum", 1),
            *check_range(self, "alpha_ce", 0, 1),
            *check_range(self, "jsd_beta", 0, 1),
            *check_range(self, "eval_every", 0),
            *check_range(self, "checkpoint_every", 1),
            *check_range(self, "keep_checkpoints", 0),
        ]
        if self.balance_temperature is not None and not self.balance_temperature > 0:
            fix = "use a number > 0 (1: proportional to examples), or null for equal shares"
            problems.append(("balance_temperature", "must be > 0", fix))
        for name, weight in self.family_weights.items():
            if not weight > 0 or weight == float("inf"):
                fix = "use a finite number > 0 (1: the default share); drop a family from the run"
                problems.append((f"family_weights.{name}", f"weight {weight} is not > 0", fix))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", self.device):
            fix = "use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
            problems.append(("device", f"unknown device {self.device!r}", fix))
        return problems
