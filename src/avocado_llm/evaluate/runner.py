"""Evaluate a model on held-out tasks: batched greedy generation, then each family's verifier."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from rich.progress import Progress
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.world.tasks import Example, get_family


@dataclass
class FamilyScore:
    correct: int = 0
    n: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class EvalResult:
    families: dict[str, FamilyScore] = field(default_factory=dict)
    answers: list[tuple[str, str, bool]] = field(default_factory=list)
    """(example id, answer, correct) for every example."""

    @property
    def overall(self) -> float:
        """Mean of the per-family accuracies (families weigh the same)."""
        if not self.families:
            return 0.0
        return sum(s.accuracy for s in self.families.values()) / len(self.families)


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 32,
) -> tuple[list[str], list[int]]:
    """Greedy answers to a batch of conversations, and the number of tokens each generated."""
    tokenizer.padding_side = "left"
    enc = tokenizer.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    enc = {k: v.to(model.device) for k, v in enc.items()}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    counts = []
    for row in new.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        counts.append(n)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in texts], counts


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    batch_size: int = 64,
    max_new_tokens: int = 32,
    description: str = "eval",
) -> EvalResult:
    result = EvalResult()
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(examples))
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            t0 = time.perf_counter()
            answers, counts = generate_answers(
                model, tokenizer, [e.messages for e in batch], max_new_tokens
            )
            per_example = (time.perf_counter() - t0) / len(batch)
            for ex, answer, n_tokens in zip(batch, answers, counts, strict=True):
                ok = get_family(ex.family).verify(answer, ex.answer)
                score = result.families.setdefault(ex.family, FamilyScore())
                score.n += 1
                score.correct += ok
                score.generated_tokens += n_tokens
                score.seconds += per_example
                result.answers.append((ex.id, answer, ok))
            progress.update(task, advance=len(batch))
    return result
