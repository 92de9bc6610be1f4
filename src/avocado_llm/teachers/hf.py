"""A local teacher: any Hugging Face causal LM directory, or a GGUF file through ``gguf_file``.

Applies the teacher's own chat template (or the recipe's override), generates in batches with
left padding and the KV cache, stops at the model's end-of-turn tokens, and keeps the top-k
log-probabilities of every generated position, read from the raw logits before temperature and
top-p (a logits processor records them, so no (B, T, V) tensor is ever kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from avocado_llm.distill.data import IGNORE, encode_chat
from avocado_llm.teachers.base import (
    Completion,
    Messages,
    SamplingParams,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
)
from avocado_llm.world.tokenizers import tokenizer_type


class TopKRecorder(LogitsProcessor):
    """Records, per step, the log-softmax top-k of the raw scores and the log-probability of
    the token that was then chosen; it changes nothing. Only one step's (B, V) is kept."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.top_values: list[torch.Tensor] = []  # per step (B, k)
        self.top_ids: list[torch.Tensor] = []  # per step (B, k)
        self.chosen: list[torch.Tensor] = []  # per step (B,)
        self._prev: torch.Tensor | None = None  # (B, V) log-probs of the previous step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._gather_chosen(input_ids[:, -1])
        logp = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        if self.k > 0:
            values, ids = logp.topk(min(self.k, logp.shape[-1]), dim=-1)
            self.top_values.append(values.cpu())
            self.top_ids.append(ids.cpu())
        self._prev = logp
        return scores

    def finish(self, last_tokens: torch.Tensor) -> None:
        """Gather the last step's chosen token (``generate`` calls no processor after it)."""
        self._gather_chosen(last_tokens)
        self._prev = None

    def _gather_chosen(self, tokens: torch.Tensor) -> None:
        if self._prev is not None:
            self.chosen.append(self._prev.gather(1, tokens[:, None]).squeeze(1).cpu())


END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|return|>", "<|end|>", "<|eot_id|>")
"""End-of-turn markers of the known chat templates (Gemma, ChatML, harmony, Llama 3)."""


MODEL_FILES = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.model", "*.tiktoken", "*.jinja",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.json", "*.index.json",
)  # fmt: skip
"""What decides a model directory's answers: weights (every format), configs, tokenizer files
and chat templates. Code files are not in it: they are never run (``trust_remote_code=False``)."""


def model_files(path: Path) -> list[Path]:
    """The files of :data:`MODEL_FILES` in a model directory (or the file itself), sorted."""
    if path.is_file():
        return [path]
    found = {f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file()}
    return sorted(found)


def weights_revision(path: Path, chat_template: str | None = None) -> str:
    """A short hash of every file that decides the model's answers (names and bytes), and of a
    chat template that replaces the tokenizer's: the model's revision in every record (and so
    in every record key)."""
    digest = hashlib.sha256()
    for file in model_files(path):
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    if chat_template is not None:
        digest.update(b"chat_template\0" + chat_template.encode())
    return "sha256:" + digest.hexdigest()[:16]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    ) -> None:
        path = Path(path)
        if not path.exists():
            raise TeacherError(name, f"no model at {path}; check the recipe's teachers[].path")
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            path, trust_remote_code=False, **kwargs
        )
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=False, **kwargs
        ).to(self.device)
        self.model.eval()
        template = Path(chat_template).read_text() if chat_template is not None else None
        if template is not None:
            self.tokenizer.chat_template = template
        if not self.tokenizer.chat_template:
            raise TeacherError(
                name,
                f"the tokenizer at {path} has no chat template; set teachers[].chat_template "
                "in the recipe to a Jinja file",
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self.batch_size = batch_size
        weights = path / gguf_file if gguf_file else path
        self.info = TeacherInfo(
            name=name,
            model=str(path),
            revision=weights_revision(weights, template),
            licence=licence,
            tokenizer=_tokenizer_kind(self.tokenizer),
        )

    def _eos_ids(self) -> list[int]:
        """The generation config's stop tokens, the tokenizer's EOS, and the end-of-turn marker
        of the chat template (a GGUF's generation config often lists only ``<eos>``)."""
        eos = self.model.generation_config.eos_token_id
        ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        vocab = self.tokenizer.get_vocab()
        template = self.tokenizer.chat_template or ""
        markers = [m for m in END_OF_TURN if m in template and m in vocab]
        for token_id in [self.tokenizer.eos_token_id, *(vocab[m] for m in markers)]:
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        return ids

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

    @torch.inference_mode()
    def score_sync(
        self, conversations: list[Messages], completions: list[str]
    ) -> list[list[float]]:
        """Per-token log-probabilities of each completion after its conversation, teacher-forced
        in this teacher's own chat template (the tokens include the end-of-turn marker the
        template puts after an answer). One forward pass per batch of ``batch_size``."""
        if len(conversations) != len(completions):
            raise ValueError(
                f"{len(conversations)} conversations but {len(completions)} completions; "
                "give one completion per conversation"
            )
        encoded = [  # the encoding the zoo was trained with: prompt, then answer + end of turn
            encode_chat(self.tokenizer, messages, completion)
            for messages, completion in zip(conversations, completions, strict=True)
        ]
        scores: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), right-padded
            for i, e in enumerate(batch):
                ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
                mask[i, : len(e.input_ids)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            for i, e in enumerate(batch):
                end = len(e.input_ids)
                first = end - sum(label != IGNORE for label in e.labels)  # first answer token
                # Position p predicts token p + 1; log-softmax over the answer positions only.
                logp = logits[i, first - 1 : end - 1].float().log_softmax(-1)  # (A, V)
                scores.append(logp.gather(1, ids[i, first:end, None]).squeeze(1).tolist())
        return scores

    @torch.inference_mode()
    def _generate_batch(
        self, conversations: list[Messages], params: SamplingParams, offset: int
    ) -> list[list[Completion]]:
        t0 = time.perf_counter()
        enc = self.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        n = params.n
        input_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(self.device)  # (B*n, P)
        mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(self.device)
        recorder = TopKRecorder(params.top_logprobs)
        sample = params.temperature > 0
        torch.manual_seed(params.seed + offset)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=None,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([recorder]),
        )
        new = out[:, input_ids.shape[1] :].cpu()  # (B*n, T)
        recorder.finish(out[:, -1])
        latency = (time.perf_counter() - t0) / len(conversations)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        completions = [
            self._completion(row, new[row], recorder, prompt_lens[row // n], latency)
            for row in range(new.shape[0])
        ]
        return [completions[i * n : (i + 1) * n] for i in range(len(conversations))]

    def _completion(
        self,
        row: int,
        tokens: torch.Tensor,
        recorder: TopKRecorder,
        prompt_len: int,
        latency: float,
    ) -> Completion:
        """Row ``row`` of the batch: cut at the first end-of-turn token."""
        ids = tokens.tolist()
        stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        generated = ids[:stop] if stop is not None else ids
        logprobs = []
        for pos, token_id in enumerate(generated):
            top = recorder.top_ids[pos][row].tolist() if recorder.k else []
            logprobs.append(
                TokenLogprobs(
                    token_id=token_id,
                    token=self.tokenizer.convert_ids_to_tokens(token_id),
                    logprob=recorder.chosen[pos][row].item(),
                    top_ids=top,
                    top_tokens=self.tokenizer.convert_ids_to_tokens(top),
                    top_logprobs=recorder.top_values[pos][row].tolist() if recorder.k else [],
                )
            )
        return Completion(
            text=self.tokenizer.decode(generated, skip_special_tokens=True).strip(),
            finish_reason="stop" if stop is not None else "length",
            token_ids=generated,
            logprobs=logprobs,
            prompt_tokens=int(prompt_len),
            completion_tokens=len(generated) + (1 if stop is not None else 0),
            latency_s=latency,
        )


def _tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    return tokenizer_type(json.loads(backend.to_str()))
