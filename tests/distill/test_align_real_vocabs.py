"""Token-level KD across the two real vocabularies of recipes/real-small.yaml, in miniature:
a Gemma-3-style tokenizer (BPE over characters, ``▁`` for spaces, single digits, byte fallback
``<0xNN>``) and a SmolLM2-style one (GPT-2 byte-level BPE, ``Ġ`` for spaces, ``ByteLevel``
post-processor without offset trimming, as transformers converts SmolLM2's GGUF). Both are
trained here (no downloads); the student is the SmolLM2-style one, as a student pruned from
SmolLM2 keeps its tokenizer.

Teachers' answers arrive as a vLLM server sends them (``text``: each token decoded on its own)
or, for an in-process teacher, as raw vocabulary pieces (``sentencepiece`` / ``byte_level``);
the targets must sit on the student's own tokens, each row a distribution, the realised teacher
token's mass on the student token with the same bytes.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerBase

from avocado_llm.distill.align import (
    kd_targets,
    piece_bytes,
    student_byte_spans,
    tokenizer_piece_kind,
)
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.templates import CHATML, GEMMA
from avocado_llm.world.tokenizers import (
    TokenizerSpec,
    tokenizer_type,
    train_tokenizer,
    wrap,
)

SMOL_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
"""GPT-2's pre-tokenisation (SmolLM2's; digit runs stay together, unlike Gemma's)."""
REAL_WORLD = [
    "The capital of France is Paris.",
    "The plural of mouse is mice.",
    "The opposite of hot is cold.",
    "A spider has 8 legs.",
    "Twelve plus seven is 19.",
    "One kilometre is 1000 metres.",
] * 200

ANSWERS = [
    "The capital of France is Paris.",
    "A spider has 8 legs, an ant has 6.",
    "The answer is 1000 metres.",
    "Café au lait in Zürich costs 4.50 francs.",  # é, ü: byte fallback / multi-byte pieces
]


@pytest.fixture(scope="module")
def gemma_style() -> PreTrainedTokenizerBase:
    spec = TokenizerSpec(
        type="char_bpe",
        vocab_size=900,
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return wrap(train_tokenizer(spec, [*world_corpus(0)[:3000], *REAL_WORLD]), spec, GEMMA)


@pytest.fixture(scope="module", params=[False, True], ids=["untrimmed", "trim_offsets"])
def smol_style(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    """SmolLM2's GGUF converts without offset trimming; a byte-level tokenizer.json with a
    ``ByteLevel(trim_offsets=True)`` post-processor (GPT-2-style hub files) leaves each
    ``Ġword``'s space out of its offsets, and must align all the same."""
    spec = TokenizerSpec(
        type="byte_bpe",
        vocab_size=700,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        pattern=SMOL_PATTERN,
    )
    tok = train_tokenizer(spec, [*world_corpus(1)[:3000], *REAL_WORLD])
    tok.post_processor = processors.ByteLevel(trim_offsets=request.param)
    return wrap(tok, spec, CHATML)


def test_the_two_styles_are_what_the_real_ones_are(
    gemma_style: PreTrainedTokenizerBase, smol_style: PreTrainedTokenizerBase
) -> None:
    import json

    assert tokenizer_piece_kind(gemma_style) == "sentencepiece"
    assert tokenizer_piece_kind(smol_style) == "byte_level"
    assert tokenizer_type(json.loads(gemma_style.backend_tokenizer.to_str())) == "char_bpe"
    assert tokenizer_type(json.loads(smol_style.backend_tokenizer.to_str())) == "byte_bpe"
    pieces = gemma_style.tokenize("Café 42")
    assert "<0xC3>" in pieces and "<0xA9>" in pieces  # é by byte fallback
    assert "4" in pieces and "2" in pieces  # single digits
    assert any(p.startswith("Ġ") for p in smol_style.tokenize("A spider has 8 legs."))


def fake_generation(
    teacher: PreTrainedTokenizerBase, answer: str, as_text: bool, k: int = 5
) -> tuple[list[str], list[list[str]], list[list[float]], list[float]]:
    """What a harvest stores for a teacher that wrote ``answer``: its tokens, and at each
    position a top-k with the realised token first (p = 0.6) and k − 1 other vocabulary
    entries sharing the rest; ``as_text``: pieces as a vLLM server sends them (each id
    decoded on its own), otherwise raw vocabulary pieces."""
    ids = teacher(answer, add_special_tokens=False)["input_ids"]
    vocab = [i for i in range(len(teacher)) if i not in teacher.all_special_ids]

    def show(i: int) -> str:
        return teacher.decode([i]) if as_text else teacher.convert_ids_to_tokens(i)

    tokens = [show(i) for i in ids]
    tops, lps = [], []
    for n, i in enumerate(ids):
        others = [v for v in vocab[n * 7 % 50 :] if v != i][: k - 1]
        tops.append([show(i), *[show(v) for v in others]])
        lps.append([math.log(0.6), *[math.log(0.4 / (k - 1))] * (k - 1)])
    return tokens, tops, lps, [math.log(0.6)] * len(ids)


def check_targets(
    student: PreTrainedTokenizerBase,
    answer: str,
    tokens: list[str],
    kind: str,
    targets: object,
) -> int:
    """Rows are distributions over the student's ids; where the realised teacher token has the
    bytes of the student's token, 0.6 of the mass is on that token. Returns those rows."""
    ids = student(answer, add_special_tokens=False)["input_ids"]
    spans = student_byte_spans(student, answer)
    starts = {}
    at = 0
    for j, tok in enumerate(tokens):
        starts[at] = j
        at += len(piece_bytes(tok, kind))  # type: ignore[arg-type]
    exact = 0
    for row, pos in enumerate(targets.positions.tolist()):  # type: ignore[attr-defined]
        total = float(targets.probs[row].sum() + targets.rest[row])  # type: ignore[attr-defined]
        assert total == pytest.approx(1.0, abs=1e-5)
        assert (targets.ids[row] < len(student)).all()  # type: ignore[attr-defined]
        j = starts[spans[pos][0]]  # a paired position starts where a teacher token starts
        if piece_bytes(tokens[j], kind) == answer.encode()[spans[pos][0] : spans[pos][1]]:  # type: ignore[arg-type]
            mass = dict(zip(targets.ids[row].tolist(), targets.probs[row].tolist(), strict=True))  # type: ignore[attr-defined]
            assert mass.get(ids[pos], 0.0) >= 0.6 - 1e-5
            exact += 1
    return exact


@pytest.mark.parametrize("as_text", [True, False], ids=["vllm-text", "raw-pieces"])
@pytest.mark.parametrize("answer", ANSWERS)
def test_gemma_style_teacher_onto_smol_style_student(
    gemma_style: PreTrainedTokenizerBase,
    smol_style: PreTrainedTokenizerBase,
    answer: str,
    as_text: bool,
) -> None:
    tokens, tops, lps, chosen = fake_generation(gemma_style, answer, as_text)
    if as_text and "é" in answer:
        # A vLLM server decodes each byte-fallback piece alone: "�", not the byte. Such an
        # answer does not spell the completion and the teacher is dropped for it, loudly.
        with pytest.raises(ValueError, match="spell"):
            kd_targets(smol_style, answer, tokens, tops, lps, chosen, "text")
        return
    kind = "text" if as_text else "sentencepiece"
    targets = kd_targets(smol_style, answer, tokens, tops, lps, chosen, kind)
    assert len(targets.positions) > 0
    exact = check_targets(smol_style, answer, tokens, kind, targets)
    assert exact >= 2  # whole words both vocabularies know ("The", " capital", ...)


@pytest.mark.parametrize("answer", ANSWERS)
def test_smol_teacher_onto_its_pruned_student_is_one_to_one(
    smol_style: PreTrainedTokenizerBase, answer: str
) -> None:
    """The student keeps SmolLM2's tokenizer: every teacher position is paired, each realised
    token lands on the very same id, raw pieces and vLLM's text alike (ASCII answers)."""
    for as_text in (False, True):
        tokens, tops, lps, chosen = fake_generation(smol_style, answer, as_text)
        kind = "text" if as_text else "byte_level"
        if as_text and not answer.isascii():
            continue  # multi-byte characters split across tokens decode to "�" one by one
        targets = kd_targets(smol_style, answer, tokens, tops, lps, chosen, kind)
        n = len(smol_style(answer, add_special_tokens=False)["input_ids"])
        assert targets.positions.tolist() == list(range(n))
        assert check_targets(smol_style, answer, tokens, kind, targets) == n


def test_smol_style_student_offsets_tile_text_with_spaces_and_accents(
    smol_style: PreTrainedTokenizerBase,
) -> None:
    for text in ANSWERS:
        spans = student_byte_spans(smol_style, text)
        assert spans[0][0] == 0 and spans[-1][1] == len(text.encode())
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_tokens_beyond_the_stored_text_are_trimmed(
    gemma_style: PreTrainedTokenizerBase, smol_style: PreTrainedTokenizerBase
) -> None:
    """What real vLLM harvests store: a base model's answer after "Answer:" is " 122" in
    tokens but "122" in text; a chat model's tokens end with "<|im_end|>". Both align on the
    text's own tokens (before: every such record's KD was dropped, 361 of 410 in real-small)."""
    answer = "The answer is 122."
    for teacher, kind in ((gemma_style, "text"), (smol_style, "text")):
        tokens, tops, lps, chosen = fake_generation(teacher, answer, as_text=True)
        padded = [" ", *tokens, "<|im_end|>"]
        tops = [[" "], *tops, ["<|im_end|>"]]
        lps = [[0.0], *lps, [0.0]]
        chosen = [0.0, *chosen, 0.0]
        plain = kd_targets(smol_style, answer, tokens, tops[1:-1], lps[1:-1], chosen[1:-1], kind)
        trimmed = kd_targets(smol_style, answer, padded, tops, lps, chosen, kind)
        assert trimmed.positions.tolist() == plain.positions.tolist() != []
        assert torch.equal(trimmed.ids, plain.ids) and torch.equal(trimmed.probs, plain.probs)
    with pytest.raises(ValueError, match="spell"):  # other extra text is still refused
        kd_targets(smol_style, answer, ["x", *tokens], tops[:-1], lps[:-1], chosen[:-1], "text")


def test_a_space_inside_the_first_token_is_cut_from_it_and_its_alternatives(
    smol_style: PreTrainedTokenizerBase,
) -> None:
    """Gemma after "Answer:" writes " Paris" (one token); the stored text is "Paris"."""
    answer = "Paris"
    (pid,) = smol_style(answer, add_special_tokens=False)["input_ids"][:1]
    (lid,) = smol_style("London", add_special_tokens=False)["input_ids"][:1]
    tops = [[" Paris", " London", "\nParis"], ["<|im_end|>"]]
    lps = [[math.log(0.7), math.log(0.2), math.log(0.1)], [0.0]]
    t = kd_targets(smol_style, answer, [" Paris", "<|im_end|>"], tops, lps, None, "text")
    assert t.positions.tolist()[0] == 0
    mass = dict(zip(t.ids[0].tolist(), t.probs[0].tolist(), strict=True))
    assert mass[pid] >= 0.7 - 1e-5 and mass.get(lid, 0.0) > 0.0
    assert float(t.rest[0]) == pytest.approx(0.1, abs=1e-5)  # "\nParis": not this position's
