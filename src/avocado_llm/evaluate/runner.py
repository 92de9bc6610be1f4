"""Score a model on held-out tasks: greedy answers, then each family's verifier.

A model is a local Hugging Face directory (batched greedy generation in this process) or any
teacher, such as an OpenAI-compatible endpoint (asked at temperature 0, with retries). Both paths
score answers the same way, so a model served by vLLM and the same weights run here can be
compared example by example.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avocado_llm.data.echoes import question_of
from avocado_llm.evaluate.stats import wilson_interval
from avocado_llm.models.chat import stop_token_ids
from avocado_llm.models.generation import Sampling, generate_batch
from avocado_llm.models.loading import MissingChatTemplate, load_model
from avocado_llm.teachers.base import SamplingParams, Teacher
from avocado_llm.world.tasks import Example, get_family


class EvalError(RuntimeError):
    """An evaluation that cannot start: a bad name, role or model source."""


@dataclass(frozen=True)
class SourcePrompt:
    """A held-out prompt of one of the recipe's ``data.sources``, scored by the source's
    verifier, or only answered (``verify`` is None: judged later against the teachers)."""

    id: str
    family: str
    """The source's name: it is reported beside the families."""
    messages: list[dict[str, str]]
    answer: str | None
    """The reference answer, if any."""
    verify: Callable[[str, str, str], float] | None = None
    """``verify(answer, reference, question)``: the source's verifier."""

    @property
    def prompt(self) -> str:
        """The last user turn: the question the verifier is given (as fusion gives it)."""
        return question_of(self.messages)


@dataclass
class FamilyScore:
    correct: int = 0
    n: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalResult:
    families: dict[str, FamilyScore] = field(default_factory=dict)
    answers: list[tuple[str, str, bool | None]] = field(default_factory=list)
    """(example id, answer, correct) for every example, in the order of the examples; correct
    is None for a prompt of a source without a verifier."""

    @property
    def overall(self) -> float:
        """Mean of the per-family accuracies (families weigh the same)."""
        if not self.families:
            return 0.0
        return sum(s.accuracy for s in self.families.values()) / len(self.families)

    def add(
        self, example: Example | SourcePrompt, answer: str, tokens: int, seconds: float
    ) -> None:
        """Score one answer with its family's (or source's) verifier; an answer to a prompt
        without one is only kept (``correct`` None), for the judge."""
        if isinstance(example, SourcePrompt):
            if example.verify is None:
                self.answers.append((example.id, answer, None))
                return
            ok = bool(example.verify(answer, example.answer or "", example.prompt))
        else:
            ok = get_family(example.family).verify(answer, example.answer)
        score = self.families.setdefault(example.family, FamilyScore())
        score.n += 1
        score.correct += ok
        score.generated_tokens += tokens
        score.seconds += seconds
        self.answers.append((example.id, answer, ok))

    def entry(self, role: str, params: int | None) -> dict[str, Any]:
        """This result as one model's entry of ``report.json``."""
        families = {
            name: {
                "accuracy": s.accuracy,
                "n": s.n,
                "correct": s.correct,
                "ci95": list(s.ci95),
                "tokens_per_s": round(s.tokens_per_s, 2),
            }
            for name, s in self.families.items()
        }
        return {"role": role, "params": params, "overall": self.overall, "families": families}


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 32,
) -> tuple[list[str], list[int]]:
    """Greedy answers to a batch of conversations, and the number of tokens each generated
    (its stop token included). Stops at the model's stop tokens, as a teacher and the serving
    engine do (:func:`~avocado_llm.models.chat.stop_token_ids`)."""
    sampling = Sampling(max_new_tokens=max_new_tokens, logprobs=False)
    stop_ids = stop_token_ids(model, tokenizer)
    rows = generate_batch(model, tokenizer, conversations, stop_ids, sampling)
    texts = [tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for [g] in rows]
    return texts, [g.completion_tokens for [g] in rows]


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example | SourcePrompt],
    batch_size: int = 64,
    max_new_tokens: int = 32,
    description: str = "eval",
) -> EvalResult:
    """Score a loaded model; a batch's time is shared evenly among its examples."""
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
                result.add(ex, answer, n_tokens, per_example)
            progress.update(task, advance=len(batch))
    return result


async def evaluate_endpoint(
    teacher: Teacher,
    examples: Sequence[Example | SourcePrompt],
    max_new_tokens: int = 32,
    chunk_size: int = 64,
    description: str = "eval",
) -> EvalResult:
    """Score any teacher (an endpoint: :class:`OpenAICompatTeacher`) at temperature 0.

    Requests run concurrently, so tokens/s is measured on wall-clock time family by family
    (a chunk holds one family only), not summed over overlapping requests."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, top_logprobs=0)
    result = EvalResult()
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(description, total=len(examples))
            for chunk in _family_chunks(examples, chunk_size):
                t0 = time.perf_counter()
                completions = await teacher.generate([e.messages for e in chunk], params)
                per_example = (time.perf_counter() - t0) / len(chunk)
                for ex, [c] in zip(chunk, completions, strict=True):
                    result.add(ex, c.text.strip(), c.completion_tokens, per_example)
                progress.update(task, advance=len(chunk))
    finally:
        await teacher.aclose()
    return result


def _family_chunks(
    examples: Sequence[Example | SourcePrompt], size: int
) -> list[list[Example | SourcePrompt]]:
    """Consecutive runs of one family, cut into chunks of at most ``size``, in order."""
    chunks = []
    for _, group in itertools.groupby(examples, key=lambda e: e.family):
        members = list(group)
        chunks += [members[i : i + size] for i in range(0, len(members), size)]
    return chunks


def load_local(path: Path, device: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model directory, ready for batched greedy generation on ``device``."""
    if not (path / "config.json").is_file():
        raise EvalError(f"no Hugging Face model in {path} (no config.json); check --model")
    try:  # never run code shipped in the directory: a model is data, not a program
        loaded = load_model(path, device=device)
    except MissingChatTemplate:
        raise EvalError(
            f"the tokenizer in {path} has no chat template; add chat_template.jinja"
        ) from None
    except (OSError, ValueError) as error:
        raise EvalError(
            f"cannot load the model in {path}: {error}".strip()[:2000]
            + "\n(Avocado never runs code shipped with a model: trust_remote_code is off)"
        ) from None
    return loaded.model, loaded.tokenizer
