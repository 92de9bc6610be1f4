"""A local teacher: any Hugging Face causal LM directory, or a GGUF file through ``gguf_file``.

Loading, the chat template (the teacher's own or the recipe's override), the stop tokens and
batched generation with top-k log-probabilities come from :mod:`avocado_llm.models`; this module
turns them into the teacher protocol's :class:`Completion` records and scores answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from avocado_llm.models.chat import END_OF_TURN
from avocado_llm.models.files import MODEL_FILES, model_files, weights_revision
from avocado_llm.models.generation import Generation, Sampling, TopKRecorder, generate_batch
from avocado_llm.models.loading import MissingChatTemplate, load_model, pick_device
from avocado_llm.models.scoring import score_completions
from avocado_llm.teachers.base import (
    Completion,
    Messages,
    SamplingParams,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
)
from avocado_llm.teachers.prompting import PromptTemplate, jinja_template, stop_cut
from avocado_llm.world.tokenizers import tokenizer_type

__all__ = [  # the models/ names stay importable from here for older callers
    "END_OF_TURN",
    "MODEL_FILES",
    "LocalTeacher",
    "TopKRecorder",
    "model_files",
    "pick_device",
    "weights_revision",
]


class LocalTeacher:
    """A Hugging Face checkpoint run in this process."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        licence: str = "unknown",
        gguf_file: str | None = None,
        chat_template: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        prompt_template: PromptTemplate | None = None,
    ) -> None:
        path = Path(path)
        if not path.exists():
            raise TeacherError(name, f"no model at {path}; check the recipe's teachers[].path")
        template = Path(chat_template).read_text() if chat_template is not None else None
        self.prompt_template = prompt_template
        if prompt_template is not None:  # a base model: its prompt template is its chat template
            template = jinja_template(prompt_template)
        try:
            loaded = load_model(path, gguf_file=gguf_file, chat_template=template, device=device)
        except MissingChatTemplate:
            raise TeacherError(
                name,
                f"the tokenizer at {path} has no chat template; set teachers[].chat_template "
                "in the recipe to a Jinja file",
            ) from None
        self.device = loaded.device
        self.tokenizer: PreTrainedTokenizerBase = loaded.tokenizer
        self.model = loaded.model
        self.eos_ids = loaded.stop_ids
        if prompt_template is not None and prompt_template.add_bos:
            template = jinja_template(prompt_template, _added_bos(self.tokenizer))
            self.tokenizer.chat_template = template
        self.batch_size = batch_size
        weights = path / gguf_file if gguf_file else path
        self.info = TeacherInfo(
            name=name,
            model=str(path),
            revision=weights_revision(weights, template),
            licence=licence,
            tokenizer=_tokenizer_kind(self.tokenizer),
        )

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        return await asyncio.to_thread(self.generate_sync, conversations, params)

    async def aclose(self) -> None:
        return None

    def generate_sync(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        """``params.n`` completions per conversation; batches sorted by length to pad less."""
        order = sorted(range(len(conversations)), key=lambda i: len(str(conversations[i])))
        results: list[list[Completion]] = [[] for _ in conversations]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self._generate_batch([conversations[i] for i in chunk], params, start)
            for i, completions in zip(chunk, batch, strict=True):
                results[i] = completions
        return results

    def score_sync(
        self, conversations: list[Messages], completions: list[str]
    ) -> list[list[float]]:
        """Per-token log-probabilities of each completion after its conversation, teacher-forced
        in this teacher's own chat template (:func:`~avocado_llm.models.scoring.score_completions`;
        one forward pass per batch of ``batch_size``)."""
        return score_completions(
            self.model, self.tokenizer, conversations, completions, self.batch_size
        )

    def _generate_batch(
        self, conversations: list[Messages], params: SamplingParams, offset: int
    ) -> list[list[Completion]]:
        sampling = Sampling(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            n=params.n,
            top_logprobs=params.top_logprobs,
            seed=params.seed + offset,
        )
        t0 = time.perf_counter()
        rows = generate_batch(self.model, self.tokenizer, conversations, self.eos_ids, sampling)
        latency = (time.perf_counter() - t0) / len(conversations)
        return [[self._completion(g, latency) for g in row] for row in rows]

    def _completion(self, generation: Generation, latency: float) -> Completion:
        """One generated row as a record: text, tokens and their log-probabilities."""
        tokens = self.tokenizer.convert_ids_to_tokens
        top_ids = generation.top_ids or [[] for _ in generation.token_ids]
        top_values = generation.top_logprobs or [[] for _ in generation.token_ids]
        logprobs = [
            TokenLogprobs(
                token_id=token_id,
                token=tokens(token_id),
                logprob=logprob,
                top_ids=top,
                top_tokens=tokens(top),
                top_logprobs=values,
            )
            for token_id, logprob, top, values in zip(
                generation.token_ids, generation.logprobs, top_ids, top_values, strict=True
            )
        ]
        token_ids, stopped = generation.token_ids, generation.stopped
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if self.prompt_template is not None:  # cut at its stop strings, as vLLM cuts
            decode = self.tokenizer.decode
            texts = [
                decode(token_ids[: i + 1], skip_special_tokens=True) for i in range(len(token_ids))
            ]
            text, keep = stop_cut(texts, self.prompt_template)
            if keep is not None:
                token_ids, logprobs, stopped = token_ids[:keep], logprobs[:keep], True
        return Completion(
            text=text.strip(),
            finish_reason="stop" if stopped else "length",
            token_ids=token_ids,
            logprobs=logprobs,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=len(token_ids) + stopped,
            latency_s=latency,
        )


def _added_bos(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token's text when the tokenizer puts it before plain text (as vLLM's
    ``/completions`` then does), else ``""``."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return str(tokenizer.bos_token) if bos is not None and ids[:1] == [bos] else ""


def _tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    return tokenizer_type(json.loads(backend.to_str()))
