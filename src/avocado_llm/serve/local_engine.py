"""The in-process engine: a Hugging Face model with dynamic batching.

Requests go into a thread-safe queue. One worker thread takes the first waiting request, waits
up to ``batch_wait_ms`` for more (and takes at once whatever queued while the previous batch
ran), and decodes them all together (:func:`~avocado_llm.serve.batching.decode`), so requests
that arrive together share their forward passes. After every step the worker hands each
request its new text through ``loop.call_soon_threadsafe``: token counts and deltas change on
the event loop only, in order, so a request's usage is exact once it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from avocado_llm.models.chat import prompt_ids
from avocado_llm.models.loading import load_model, pick_device
from avocado_llm.models.scoring import score_tokens
from avocado_llm.protect import kernel
from avocado_llm.serve.batching import Row, TextTracker, decode
from avocado_llm.serve.engine import (
    Delta,
    EngineError,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    Usage,
    longest_token,
)
from avocado_llm.serve.sampling import row_seed

log = logging.getLogger("avocado.serve.engine")


class LocalGeneration:
    """One request in the local engine: filled by the worker, read on the event loop."""

    def __init__(
        self, prompts: Sequence[Prompt], options: SamplingOptions, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.prompts = list(prompts)
        self.options = options
        self.usage = Usage(prompt_tokens=sum(p.tokens for p in prompts))
        self.cancelled = False  # set on the loop, read by the worker between steps
        self.rows_left = len(prompts) * options.n  # worker only
        self._loop = loop
        self._queue: asyncio.Queue[list[Delta] | EngineError | None] = asyncio.Queue()
        self._stopped = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Delta]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, EngineError):
                raise item
            for delta in item:
                yield delta

    def cancel(self) -> None:
        self.cancelled = True

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def deliver(self, deltas: list[Delta], tokens: int, done: bool) -> None:
        """Worker thread: hand over one step's output."""
        self._call(self._receive, deltas, tokens, done)

    def fail(self, error: EngineError) -> None:
        """Worker thread: the batch failed."""
        self._call(self._receive, error, 0, True)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        # The server may have shut its loop down while a batch still ran; nobody listens then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _receive(self, item: list[Delta] | EngineError, tokens: int, done: bool) -> None:
        self.usage.completion_tokens += tokens
        if isinstance(item, EngineError):  # text streamed before the failure is billed
            item.billable = self.usage.completion_tokens > 0
        if item:
            self._queue.put_nowait(item)
        if done:
            self._queue.put_nowait(None)
            self._stopped.set()


class LocalEngine:
    """Serves the model directory ``model_dir``; :meth:`start` loads it and starts the worker."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_name: str | None = None,
        device: str = "auto",
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise ValueError(f"no Hugging Face model in {self.model_dir} (config.json missing)")
        self.model = model_name or self.model_dir.resolve().name
        self.context_length: int | None = None
        self.max_token_chars: int | None = None
        self.features: frozenset[str] = frozenset()  # no tools, no constrained decoding
        self.device = pick_device(device)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.threads = threads
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        """Requests in each batch run so far (most recent last)."""
        self.on_batch: Callable[[int], None] | None = None
        """Called by the worker with each batch's number of requests (metrics)."""
        self._queue: queue.Queue[LocalGeneration | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Load the model (in a thread) and start the worker; a no-op when already started."""
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._work, name="avocado-engine", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Prompt:
        if tools:  # the server refuses them first (features): never dropped silently
            raise ValueError("this model does not support tools")
        try:
            ids = prompt_ids(self.tokenizer, messages)
        except Exception as e:  # jinja raises its own errors for conversations it refuses
            raise ValueError(f"the model's chat template refused the messages: {e}") from e
        return Prompt(tokens=len(ids), token_ids=tuple(ids), messages=messages)

    def text_prompt(self, text: str) -> Prompt:
        ids = self.tokenizer(text)["input_ids"]
        return Prompt(tokens=len(ids), token_ids=tuple(ids), text=text)

    def generate(self, prompts: Sequence[Prompt], options: SamplingOptions) -> LocalGeneration:
        if self._thread is None:
            raise EngineError("the engine is not started", status=503)
        self._check_ids(prompts)
        job = LocalGeneration(prompts, options, asyncio.get_running_loop())
        self._queue.put(job)
        return job

    def _check_ids(self, prompts: Sequence[Prompt]) -> None:
        """A 400 unless every token id a client sent is one of the model's."""
        for prompt in prompts:
            ids = prompt.token_ids if prompt.text is None and prompt.messages is None else None
            if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
                raise EngineError(
                    "the prompt has a token id outside this model's vocabulary "
                    f"(0 to {self.vocab_size - 1})",
                    status=400,
                )

    def _load(self) -> None:
        if self.threads is not None:  # process-wide: the engine is the process's torch user
            torch.set_num_threads(self.threads)
        loaded = load_model(self.model_dir, device=self.device)
        self.tokenizer, self.hf_model = loaded.tokenizer, loaded.model
        self.context_length = int(getattr(self.hf_model.config, "max_position_embeddings", 2048))
        self.max_token_chars = longest_token(self.tokenizer)
        embeddings = self.hf_model.get_input_embeddings().weight.shape[0]  # type: ignore[union-attr]
        self.vocab_size = min(len(self.tokenizer), int(embeddings))
        self.eos_ids = frozenset(loaded.stop_ids)
        # compile (or load) the watermark's kernel now, not in the first request
        if self.device.type == "cpu":
            kernel.available()
        else:
            from avocado_llm.protect import gpu_kernel

            if gpu_kernel.available(self.device):
                head = self.hf_model.get_output_embeddings()
                gpu_kernel.warm(self.device, int(head.weight.shape[0]))  # type: ignore[union-attr]

    def _work(self) -> None:
        """The worker thread: batch, decode, repeat until ``None`` arrives."""
        carry: LocalGeneration | None = None
        while True:
            first = carry or self._queue.get()
            if first is None:
                return
            batch, carry, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _collect(
        self, first: LocalGeneration
    ) -> tuple[list[LocalGeneration], LocalGeneration | None, bool]:
        """The batch that starts with ``first``: what arrives within the wait, up to the size."""
        batch, rows = [first], first.rows_left
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:  # past the wait, still take what is already queued
                job = (
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get(False)
                )
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if rows + job.rows_left > self.max_batch_size:
                return batch, job, False
            batch.append(job)
            rows += job.rows_left
        return batch, None, False

    def _run(self, batch: list[LocalGeneration]) -> None:
        live = [job for job in batch if not job.cancelled]
        for job in batch:
            if job.cancelled:
                job.deliver([], 0, True)
        if not live:
            return
        self.batch_sizes.append(len(live))
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            for job in live:
                if job.options.echo:
                    self._echo(job)
            live = [job for job in live if job.rows_left]
            if live:
                decode(self.hf_model, self.tokenizer, self._rows(live), self.eos_ids, self._step)
        except Exception:
            log.exception("generation failed for a batch of %d requests", len(live))
            for job in live:
                if job.rows_left:  # not those already answered (an echo of max_tokens 0)
                    job.fail(EngineError("The model failed while generating; retry the request."))

    def _echo(self, job: LocalGeneration) -> None:
        """Hand each choice its prompt (``echo``), with the prompt's log-probabilities when
        asked (one teacher-forced pass per prompt); a job of ``max_tokens`` 0 ends here."""
        opts, deltas = job.options, []
        last = opts.max_tokens == 0
        for p, prompt in enumerate(job.prompts):
            ids = list(prompt.token_ids or ())
            text = prompt.text if prompt.text is not None else self.tokenizer.decode(ids)
            logprobs = [] if opts.logprobs is None else self._prompt_logprobs(ids, opts.logprobs)
            finish = "length" if last else None
            for s in range(opts.n):
                deltas.append(Delta(p * opts.n + s, str(text), finish, list(logprobs)))
        if last:
            job.rows_left = 0
        job.deliver(deltas, 0, last)

    def _prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        scores = score_tokens(self.hf_model, ids, top)
        text_of = self._text_of
        return [
            TokenLogprob(text_of(t), lp, [(text_of(i), v) for i, v in zip(alts, vs, strict=True)])
            for t, lp, alts, vs in zip(
                ids, scores.logprobs, scores.top_ids, scores.top_logprobs, strict=True
            )
        ]

    def _text_of(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def _rows(self, jobs: list[LocalGeneration]) -> list[Row]:
        rows = []
        for job in jobs:
            opts = job.options
            for p, prompt in enumerate(job.prompts):
                for s in range(opts.n):
                    choice = p * opts.n + s
                    seed = row_seed(opts.seed, choice)  # each choice its own, reproducible
                    tracker = TextTracker(self.tokenizer, opts.stop)
                    ids = list(prompt.token_ids or ())
                    rows.append(Row(job, choice, ids, opts, tracker, seed))
        return rows

    @staticmethod
    def _step(rows: list[Row]) -> None:
        """Hand each request the tokens its rows produced in this step."""
        out: dict[int, tuple[LocalGeneration, list[Delta], int]] = {}
        for row in rows:
            job, deltas, tokens = out.get(id(row.job), (row.job, [], 0))
            if row.finish != "cancelled" and (row.text or row.finish or row.logprobs):
                deltas.append(Delta(row.index, row.text, row.finish, row.logprobs))
            row.text, row.logprobs = "", []
            if row.finish is not None:
                job.rows_left -= 1
            out[id(job)] = (job, deltas, tokens + 1)
        for job, deltas, tokens in out.values():
            job.deliver(deltas, tokens, job.rows_left == 0)
