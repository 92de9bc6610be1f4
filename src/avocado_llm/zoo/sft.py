"""The zoo's teacher training: the house's one loop (:func:`avocado_llm.distill.train.train`),
cross-entropy on the answer only, in the settings the shipped teachers were trained with.

The teachers are trained from scratch, on the CPU, with AdamW, linear warm-up then cosine decay.
What sets the zoo apart from a distillation is :data:`ZOO_LOOP`: one generator draws every
step's batch, weight decay spares norms and biases, and the peak learning rate sits inside the
schedule's factor. With it the loop rebuilds the shipped teachers, and the numbers in
``zoo.json``, bit for bit (``tests/zoo/test_one_loop.py`` checks it against the zoo's former loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from avocado_llm.config import TrainingConfig
from avocado_llm.distill.batches import DistillItem
from avocado_llm.distill.data import IGNORE, Encoded
from avocado_llm.distill.train import LoopSettings, train

ZOO_LOOP = LoopSettings(draw="stream", decay="matrices", peak_in_factor=True)


@dataclass(frozen=True)
class SFTSettings:
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0

    def training(self) -> TrainingConfig:
        """The loop's training section: cross-entropy only, one batch a step, on the CPU."""
        return TrainingConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            grad_accum=1,
            alpha_ce=1.0,
            balance_families=False,
            checkpoint_every=self.steps,
            device="cpu",
            precision="fp32",
        )


def sft_item(example: Encoded) -> DistillItem:
    """A training example as the loop's item, with no KD targets."""
    start = next((i for i, label in enumerate(example.labels) if label != IGNORE), None)
    if start is None or start == 0:
        raise ValueError("a training example needs a prompt and an answer (labelled tokens)")
    return DistillItem(example.input_ids, example.labels, start)


def train_sft(
    model: PreTrainedModel,
    data: list[Encoded],
    settings: SFTSettings,
    pad_id: int,
    description: str = "train",
) -> list[float]:
    """Train ``model`` in place on ``data``, leave it in eval mode; returns every step's loss."""
    if not data:
        raise ValueError("no training examples: check the recipe's families and harvest")
    history = train(
        model,
        [sft_item(e) for e in data],
        settings.training(),
        pad_id=pad_id,
        out_dir=None,
        seed=settings.seed,
        loop=ZOO_LOOP,
        description=description,
    )
    model.eval()
    return [h.loss for h in history]
