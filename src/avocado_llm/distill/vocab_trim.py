"""Vocabulary trimming (``student.prune.vocab_size``): a student that keeps only the tokens its
task uses, and every token needed to still encode any text.

A 49k-token tied embedding is 28M of SmolLM2-135M's 134M parameters; a student for a few
narrow tasks uses a few thousand tokens. The kept tokens are, in order: the special and added
tokens, the 256 tokens of the byte alphabet (byte-level BPE's 256 characters, or the
``<0x00>``…``<0xFF>`` pieces of a BPE with byte fallback) and the ids the model config names;
then the corpus's tokens, most frequent first; then their twins with and without a leading
space and capitalised (an answer starts its turn with "small", a prompt says " small"); then
the lowest remaining ids, each with its space twin (a BPE vocabulary is in merge order, so
these are the commonest words of the pretraining text), until ``vocab_size``. Every merged
token comes with its *merge closure*: the two tokens it is merged from, recursively. The
merges whose parts and result are all kept stay, in their order.

So the trimmed tokenizer encodes the corpus into exactly the same token strings (every merge
BPE applied to a corpus word is kept, and it is still the lowest-ranked one that applies), and
any other text into valid, perhaps longer, token sequences that decode to the same text. Kept
tokens get new contiguous ids in their old order; the embedding (and an untied LM head) keep
their rows, so the model's logits at the kept ids are unchanged.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import pre_tokenizers
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_ID_FIELDS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "sep_token_id",
    "decoder_start_token_id",
)


def _tokenizer_json(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"cannot trim the vocabulary of a {type(tok).__name__}: only fast (tokenizers) "
            "tokenizers are supported"
        )
    data = json.loads(backend.to_str())
    if data["model"].get("type") != "BPE":
        raise ValueError(
            f"cannot trim a {data['model'].get('type')} tokenizer's vocabulary: only BPE "
            "(byte-level, or with byte fallback) is supported; remove student.prune.vocab_size"
        )
    return data


def _merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


def _is_byte_level(data: dict[str, Any]) -> bool:
    def has(part: dict[str, Any] | None) -> bool:
        if not part:
            return False
        parts = part.get("pretokenizers") or part.get("decoders") or [part]
        return any(p.get("type") == "ByteLevel" for p in parts)

    return has(data.get("pre_tokenizer")) or has(data.get("decoder"))


def alphabet(data: dict[str, Any]) -> list[str]:
    """The tokens that spell any text: the 256 byte characters, or the byte-fallback pieces
    (those of them the vocabulary has)."""
    vocab = data["model"]["vocab"]
    if _is_byte_level(data):
        pieces = sorted(pre_tokenizers.ByteLevel.alphabet())
    elif data["model"].get("byte_fallback"):
        pieces = [f"<0x{b:02X}>" for b in range(256)]
    else:
        raise ValueError(
            "cannot trim this tokenizer's vocabulary: it is neither byte-level nor byte-fallback "
            "BPE, so a trimmed vocabulary could not encode every text"
        )
    # A byte the origin's vocabulary lacks (SmolLM2's lacks 21 that UTF-8 text rarely or never
    # holds) was never encodable; trimming cannot lose it.
    return [p for p in pieces if p in vocab]


def corpus_counts(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    return counts


def variants(piece: str | None, space: str, cases: bool = True) -> list[str]:
    """A word piece's twins: with and without the leading space, and (``cases``) capitalised
    and lower case ("Ġsmall" → "small", "ĠSmall", "Small"): an answer starts its turn without
    a space, a prompt writes the same word after one."""
    word = piece[1:] if piece and piece.startswith(space) else piece
    if not word or not word.isalpha():
        return []
    forms = {word, word.lower(), word[0].upper() + word[1:]} if cases else {word}
    return [f for w in sorted(forms) for f in (w, space + w) if f != piece]


def plan_vocab(
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    size: int,
    extra_ids: Sequence[int] = (),
) -> tuple[list[int], dict[str, int]]:
    """The old ids to keep (sorted, at most ``size``) and counts of where they came from."""
    data = _tokenizer_json(tok)
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: piece for piece, i in vocab.items()}
    parts: dict[str, list[str]] = {}
    for a, b in _merges(data["model"]):  # every merge that makes a token (usually one)
        parts.setdefault(a + b, []).extend((a, b))
    n_ids = max([*by_id, *(t["id"] for t in data["added_tokens"])]) + 1
    if size >= n_ids:
        raise ValueError(
            f"prune.vocab_size is {size:,}, but the tokenizer has only {n_ids:,} tokens; "
            "use a smaller size or remove vocab_size"
        )
    kept: set[int] = set()

    def closure(i: int) -> set[int]:
        todo, found = [i], set()
        while todo:
            j = todo.pop()
            if j in kept or j in found:
                continue
            found.add(j)
            piece = by_id.get(j)
            if piece in parts:
                todo += [vocab[p] for p in parts[piece] if p in vocab]
        return found

    required = {t["id"] for t in data["added_tokens"]} | {vocab[p] for p in alphabet(data)}
    required |= {i for i in extra_ids if 0 <= i < n_ids}
    for i in sorted(required):
        kept |= closure(i)
    if len(kept) > size:
        raise ValueError(
            f"prune.vocab_size is {size:,}, but the special tokens, the 256 byte tokens and "
            f"the ids the model config names need {len(kept):,}; allow at least that many"
        )
    sources = {"required": len(kept)}
    counts = corpus_counts(tok, texts)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    space = "Ġ" if _is_byte_level(data) else "▁"
    twins = [vocab[v] for i in ranked for v in variants(by_id[i], space) if v in vocab]
    fill = [
        j
        for i in sorted(by_id)
        for j in (i, *(vocab[v] for v in variants(by_id[i], space, cases=False) if v in vocab))
    ]
    for phase, order in (("corpus", ranked), ("variants", twins), ("fill", fill)):
        before = len(kept)
        for i in order:
            if len(kept) >= size:
                break
            more = closure(i)
            if len(kept) + len(more) <= size:
                kept |= more
        sources[phase] = len(kept) - before
    covered = sum(c for i, c in counts.items() if i in kept)
    sources["corpus_tokens"] = sum(counts.values())
    sources["corpus_tokens_kept"] = covered
    return sorted(kept), sources


def trim_tokenizer_json(data: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """``data`` (a tokenizer.json) with only the ``keep`` ids, renumbered 0… in their order."""
    new_id = {old: new for new, old in enumerate(keep)}
    model = data["model"]
    vocab = {p: new_id[i] for p, i in model["vocab"].items() if i in new_id}
    merges = [[a, b] for a, b in _merges(model) if a in vocab and b in vocab and a + b in vocab]
    added = [{**t, "id": new_id[t["id"]]} for t in data["added_tokens"]]
    post = data.get("post_processor")
    if post:
        _remap_post_processor(post, new_id)
    return {**data, "added_tokens": added, "model": {**model, "vocab": vocab, "merges": merges}}


def _remap_post_processor(post: dict[str, Any], new_id: dict[int, int]) -> None:
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # RobertaProcessing / BertProcessing: [token, id]
        if isinstance(post.get(key), list):
            post[key] = [post[key][0], new_id[post[key][1]]]
    for inner in post.get("processors") or []:
        _remap_post_processor(inner, new_id)


def trim_tokenizer(tok: PreTrainedTokenizerBase, keep: Sequence[int]) -> PreTrainedTokenizerBase:
    """A new tokenizer with only the ``keep`` ids (its special tokens and chat template kept)."""
    data = trim_tokenizer_json(_tokenizer_json(tok), keep)
    new_id = {old: new for new, old in enumerate(keep)}
    with tempfile.TemporaryDirectory(prefix="avocado-vocab-") as tmp:
        tok.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        config_path = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("added_tokens_decoder"), dict):
            config["added_tokens_decoder"] = {
                str(new_id[int(k)]): v
                for k, v in config["added_tokens_decoder"].items()
                if int(k) in new_id
            }
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
        trimmed = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
    if tok.chat_template and trimmed.chat_template != tok.chat_template:
        trimmed.chat_template = tok.chat_template
    return trimmed


def config_token_ids(model: PreTrainedModel) -> list[int]:
    """The token ids the model config and generation config name (bos, eos, pad, …)."""
    found: list[int] = []
    for config in (model.config, getattr(model, "generation_config", None)):
        for name in SPECIAL_ID_FIELDS:
            value = getattr(config, name, None)
            found += [v for v in (value if isinstance(value, list) else [value]) if v is not None]
    return found


def _remap_ids(config: Any, new_id: dict[int, int]) -> None:
    for name in SPECIAL_ID_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, list):
            setattr(config, name, [new_id[v] for v in value if v in new_id])
        elif value is not None:
            setattr(config, name, new_id.get(value))


@torch.no_grad()
def trim_model(model: PreTrainedModel, keep: Sequence[int]) -> None:
    """Keep only rows ``keep`` of the input embedding and LM head (in place), remap the token
    ids of the config and generation config, and set ``vocab_size``."""
    rows = torch.tensor(list(keep), dtype=torch.long)
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    embed.weight = nn.Parameter(embed.weight[rows].clone())
    embed.num_embeddings = len(rows)
    new_id = {int(old): new for new, old in enumerate(keep)}
    if getattr(embed, "padding_idx", None) is not None:
        embed.padding_idx = new_id.get(embed.padding_idx)
    if head is not None:
        if tied:
            head.weight = embed.weight
        else:
            head.weight = nn.Parameter(head.weight[rows].clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias[rows].clone())
        head.out_features = len(rows)
    text_config = model.config.get_text_config()
    text_config.vocab_size = len(rows)
    if isinstance(getattr(model, "vocab_size", None), int):  # Gemma 3 reads its own copy
        model.vocab_size = len(rows)  # (in the loss: logits.view(-1, self.vocab_size))
    for config in {id(c): c for c in (model.config, text_config)}.values():
        _remap_ids(config, new_id)
    if getattr(model, "generation_config", None) is not None:
        _remap_ids(model.generation_config, new_id)


def vocab_params(model: PreTrainedModel, size: int) -> int:
    """Parameters of the embedding and LM head with ``size`` rows (the rest is unchanged)."""
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    total = size * embed.weight.shape[1]
    if head is not None and head.weight is not embed.weight:
        total += size * head.weight.shape[1]
    if head is not None and getattr(head, "bias", None) is not None:
        total += size
    return total


def current_vocab_params(model: PreTrainedModel) -> int:
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    total = embed.weight.numel()
    if head is not None and head.weight is not embed.weight:
        total += head.weight.numel()
    if head is not None and getattr(head, "bias", None) is not None:
        total += head.bias.numel()
    return total


def trim_vocab(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    size: int,
) -> tuple[PreTrainedTokenizerBase, dict[str, Any]]:
    """Trim ``model`` (in place) and return the trimmed tokenizer and a record of it."""
    before = model.get_input_embeddings().weight.shape[0]
    keep, sources = plan_vocab(tok, texts, size, config_token_ids(model))
    if keep[-1] >= before:
        raise ValueError(f"the tokenizer has ids up to {keep[-1]}, the embedding only {before}")
    trimmed = trim_tokenizer(tok, keep)
    trim_model(model, keep)
    return trimmed, {"before": before, "after": len(keep), **sources}
