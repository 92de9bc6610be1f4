"""Scoring text for the watermark: tokenise with the served model's tokenizer, keep distinct
(context, token) pairs, count green pairs under one key or every candidate account's key.

    detector = Detector.from_model_dir("runs/tiny/student")
    score = detector.score(["The answer is 42.", ...], key)
    best = detector.by_account(texts, secret, [1, 2, 3])
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avocado_llm.protect.scheme import (
    DEFAULT_PARAMS,
    Score,
    WatermarkParams,
    account_key,
    distinct_pairs,
    gate_entropy,
    score_pairs,
)


@dataclass(frozen=True)
class AccountScore:
    account: int | str
    score: Score


@dataclass(frozen=True)
class Attribution:
    """Which account's key explains the text best, and how sure that is."""

    best: AccountScore
    scores: list[AccountScore]
    """Every candidate, most significant first."""

    @property
    def corrected_p(self) -> float:
        """The best p-value times the number of accounts tried (Bonferroni): the chance that
        *some* account looks this watermarked by luck."""
        return min(1.0, self.best.score.p_value * len(self.scores))


class Detector:
    """Scores texts with one tokenizer (the served model's) and the scheme's parameters; with
    an :class:`EntropyGate` and the prompts, only the positions the gate selects."""

    def __init__(
        self,
        tokenizer: Any,
        params: WatermarkParams = DEFAULT_PARAMS,
        gate: EntropyGate | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.gate = gate

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        params: WatermarkParams = DEFAULT_PARAMS,
        min_entropy: float = 0.0,
    ) -> Detector:
        """The served model's tokenizer; and its weights too when ``min_entropy > 0``."""
        if min_entropy > 0:
            gate = EntropyGate.from_model_dir(model_dir, min_entropy)
            return cls(gate.tokenizer, params, gate)
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(Path(model_dir), trust_remote_code=False), params)

    def token_ids(self, text: str) -> list[int]:
        """An answer's token ids, as the served model would have produced them."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def pairs(
        self, texts: Sequence[str], prompts: Sequence[list[dict[str, str]]] | None = None
    ) -> tuple[list[tuple[tuple[int, ...], int]], int]:
        """Distinct (context, token) pairs of the texts, and the number of tokens seen. With
        the gate and the prompts, only positions where the model's entropy reaches it."""
        ids = [self.token_ids(t) for t in texts]
        keep = None
        if self.gate is not None and prompts is not None:
            keep = self.gate.keep(prompts, ids)
        return distinct_pairs(ids, self.params, keep), sum(len(i) for i in ids)

    def score(
        self,
        texts: Sequence[str],
        key: int,
        prompts: Sequence[list[dict[str, str]]] | None = None,
    ) -> Score:
        pairs, tokens = self.pairs(texts, prompts)
        return score_pairs(pairs, [key], self.params, tokens)[0]

    def by_account(
        self,
        texts: Sequence[str],
        secret: str,
        accounts: Sequence[int | str],
        prompts: Sequence[list[dict[str, str]]] | None = None,
    ) -> Attribution:
        """Score the texts under every account's key; the best explains them."""
        if not accounts:
            raise ValueError("no candidate accounts to attribute the text to")
        pairs, tokens = self.pairs(texts, prompts)
        keys = [account_key(secret, a) for a in accounts]
        scores = [
            AccountScore(a, s)
            for a, s in zip(accounts, score_pairs(pairs, keys, self.params, tokens), strict=True)
        ]
        scores.sort(key=lambda s: (s.score.p_value, -s.score.green))
        return Attribution(scores[0], scores)


@dataclass(frozen=True)
class Answer:
    """One answer to score, with its conversation when the file has it."""

    text: str
    messages: list[dict[str, str]] | None = None


def read_answers(path: Path) -> list[Answer]:
    """Answers from a file: JSONL (one answer per line: a string, or an object with ``text``,
    ``answer``, ``completion`` or ``content`` — and optionally ``messages`` or ``prompt`` —,
    or an OpenAI chat/completions response) or plain text (one answer per non-empty line)."""
    raw = path.read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    try:
        items = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        return [Answer(line.strip()) for line in lines]
    return [a for item in items for a in _answers_of(item)]


def _answers_of(item: Any) -> list[Answer]:
    if isinstance(item, str):
        return [Answer(item)]
    if not isinstance(item, dict):
        return [Answer(str(item))]
    messages = item.get("messages")
    if isinstance(item.get("prompt"), str):
        messages = [{"role": "user", "content": item["prompt"]}]
    messages = messages if isinstance(messages, list) else None
    for field in ("text", "answer", "completion", "content"):
        if isinstance(item.get(field), str):
            return [Answer(item[field], messages)]
    out = []
    for choice in item.get("choices") or []:
        message = choice.get("message") or {}
        text = message.get("content") if message else choice.get("text")
        if isinstance(text, str):
            out.append(Answer(text, messages))
    return out


class EntropyGate:
    """The positions a gated watermark acted on, recomputed from the served model: the
    entropy of its next-token distribution at each answer position, given the prompt.

    Scoring only those positions is the SWEET detector (Lee et al. 2024): the scored pairs are
    the ones the engine could bias, so far fewer are needed. The selection depends on the
    model and the prompt, never on the key, so the binomial test stays exact."""

    def __init__(self, model: Any, tokenizer: Any, threshold: float, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.threshold, self.batch_size = threshold, batch_size

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, threshold: float) -> EntropyGate:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(Path(model_dir), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            Path(model_dir), dtype=torch.float32, trust_remote_code=False
        )
        return cls(model.eval(), tok, threshold)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def entropies(
        self, prompts: Sequence[list[dict[str, str]]], answers: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Entropy (nats) of the model before each answer token."""
        import torch

        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(answers), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(answers)))
            seqs = [(self.prompt_ids(prompts[i]), list(answers[i])) for i in chunk]
            ids, mask = left_pad([p + a for p, a in seqs], pad)
            width = ids.shape[1]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            device = self.model.device  # the serving engine's model may sit on a GPU
            ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions
                ).logits.float()
            ent = gate_entropy(logits).cpu()  # (B, W): the gate's entropy of the next token
            for r, (_, a) in enumerate(seqs):
                # answer token j is predicted at position width - len(a) - 1 + j
                first = width - len(a) - 1
                out.append(ent[r, first : first + len(a)].tolist())
        return out

    def keep(
        self, prompts: Sequence[list[dict[str, str]]], answers: Sequence[Sequence[int]]
    ) -> list[list[bool]]:
        return [[e >= self.threshold for e in row] for row in self.entropies(prompts, answers)]

    def hesitations(
        self, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 24
    ) -> list[int]:
        """For each prompt, how many positions of the model's own greedy answer — without
        any watermark, so the count depends on the model and the prompt, never on a key —
        reach the gate: the positions where the served API's answer to it was marked."""
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        eos = {tok.eos_token_id, pad} - {None}
        out: list[int] = []
        for _, new, scores in self.greedy(prompts, max_new_tokens):
            ent = gate_entropy(scores)  # (B, T)
            rows = new.shape[0]
            done = torch.zeros(rows, dtype=torch.bool)
            count = torch.zeros(rows, dtype=torch.long)
            for t in range(new.shape[1]):  # the answer's tokens (not its end): what is scored
                done |= torch.tensor([int(x) in eos for x in new[:, t]])
                count += (~done & (ent[:, t] >= self.threshold)).long()
            out.extend(count.tolist())
        return out

    def greedy(
        self, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 24
    ) -> Iterator[tuple[int, Any, Any]]:
        """The model's own greedy answers (no watermark), a batch at a time: the index of the
        batch's first prompt, the new tokens (B, T) and the float logits before each (B, T, V)."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, mask = left_pad([self.prompt_ids(m) for m in chunk], pad)
            ids, mask = ids.to(self.model.device), mask.to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            new = gen.sequences[:, ids.shape[1] :].cpu()
            yield start, new, torch.stack(gen.scores, dim=1).float().cpu()


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """Token rows as one left-padded batch: ids and attention mask, (B, longest)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[r, width - len(row) :] = 1
    return ids, mask
