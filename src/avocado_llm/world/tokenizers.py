"""Tokenizers for the tiny world, trained with the ``tokenizers`` library on the world's text.

Three families, as in the real models, so that cross-tokenizer distillation is the normal path:

- ``unigram``: SentencePiece-style Unigram with ``▁`` for spaces, single digits and byte
  fallback (``<0xNN>``), like Gemma's;
- ``byte_bpe``: byte-level BPE (``Ġ`` for spaces) with a pre-tokenisation regex — Qwen's (single
  digits) or o200k's (digit groups of up to three, as gpt-oss);
- ``char_bpe``: BPE over characters with byte fallback and ``▁``, like Llama 2's (the default
  student).

Each is saved as a ``PreTrainedTokenizerFast`` with its chat template, so that plain
``AutoTokenizer.from_pretrained(dir)`` loads it with no Avocado code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TokenizerType = Literal["unigram", "byte_bpe", "char_bpe"]

# Pre-tokenisation regexes of the real families (from their tokenizer.json files).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


@dataclass(frozen=True)
class TokenizerSpec:
    """How to build one tokenizer."""

    type: TokenizerType
    vocab_size: int
    special_tokens: tuple[str, ...]
    """Added as special tokens, in this order, at the start of the vocabulary."""
    bos_token: str | None
    eos_token: str
    pad_token: str
    unk_token: str | None = None
    pattern: str | None = None
    """Pre-tokenisation regex for ``byte_bpe``."""


def train_tokenizer(spec: TokenizerSpec, corpus: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of ``spec.type`` on ``corpus``; deterministic for a given corpus."""
    texts = list(corpus)
    special = list(spec.special_tokens)
    if spec.type == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated"),
            ]
        )
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size - len(BYTE_TOKENS),
            special_tokens=special,
            unk_token=spec.unk_token,
            show_progress=False,
            max_piece_length=12,
        )
        tok.train_from_iterator(texts, trainer)
        _add_byte_fallback_unigram(tok, spec)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    elif spec.type == "byte_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(spec.pattern or QWEN_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok.decoder = decoders.ByteLevel()
    elif spec.type == "char_bpe":
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=spec.unk_token, fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Split(Regex("▁?[^▁]+|▁+"), behavior="isolated"),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size - len(BYTE_TOKENS),
            special_tokens=special,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok = _add_byte_fallback_bpe(tok)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    else:
        raise ValueError(f"unknown tokenizer type {spec.type!r}; use unigram, byte_bpe or char_bpe")
    return tok


def _add_byte_fallback_unigram(tok: Tokenizer, spec: TokenizerSpec) -> None:
    """Append ``<0xNN>`` pieces so that any text encodes (Unigram's trainer does not add them)."""
    state = json.loads(tok.to_str())
    vocab = [(piece, score) for piece, score in state["model"]["vocab"]]
    floor = min(score for _, score in vocab) - 1.0
    known = {piece for piece, _ in vocab}
    vocab += [(b, floor) for b in BYTE_TOKENS if b not in known]
    unk_id = next(i for i, (piece, _) in enumerate(vocab) if piece == spec.unk_token)
    tok.model = models.Unigram(vocab, unk_id=unk_id, byte_fallback=True)


def _add_byte_fallback_bpe(tok: Tokenizer) -> Tokenizer:
    """Append ``<0xNN>`` pieces to a character BPE vocabulary (ordinary tokens, not special)."""
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    for b in BYTE_TOKENS:
        vocab.setdefault(b, len(vocab))
    return Tokenizer.from_str(json.dumps(state))


def wrap(tok: Tokenizer, spec: TokenizerSpec, chat_template: str) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer, with special tokens and chat template set."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token=spec.unk_token,
        additional_special_tokens=[
            t
            for t in spec.special_tokens
            if t not in {spec.bos_token, spec.eos_token, spec.pad_token, spec.unk_token}
        ],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template
    return fast


def tokenizer_type(tok: dict[str, object]) -> str:
    """``unigram``, ``byte_bpe`` or ``char_bpe``, from a parsed ``tokenizer.json``."""
    model = tok["model"]["type"]  # type: ignore[index]
    if model == "Unigram":
        return "unigram"
    if "ByteLevel" in json.dumps(tok.get("pre_tokenizer")):
        return "byte_bpe"
    return "char_bpe" if model == "BPE" else str(model).lower()


def tokenizer_vocab_size(tok: dict[str, object]) -> int:
    """Distinct ids: model vocabulary plus added tokens."""
    vocab = tok["model"]["vocab"]  # type: ignore[index]
    ids = set(range(len(vocab))) if isinstance(vocab, list) else set(vocab.values())
    ids |= {t["id"] for t in tok.get("added_tokens", [])}  # type: ignore[union-attr]
    return len(ids)
