"""Cross-tokenizer KD targets: a teacher's stored top-k moved onto the student's ids, by bytes.

Design sections A–D of ``shared/notes/cross-tokenizer-kd.md``:

A. Byte spans. The student's come from its tokenizer's character offsets; the teacher's from the
   stored pieces of its generated tokens (never re-tokenised), and both must spell the completion.
B. Pairing. Teacher position j is used only where its start byte is also the start of a student
   token i: both then predict what follows the same byte prefix.
C. Candidate map. A teacher piece goes to the student token with the same bytes, else to the first
   piece of the student's tokenisation of those bytes (a marginal over the next bytes that both
   sides share); partial UTF-8 to the student's byte token; end-of-turn and other specials only
   through ``special_map``; anything else to REST.
D. Targets. Teacher token at least as long as the student's: the mapped top-k (inner student
   positions get no KD). Teacher tokens shorter, ending together: the chain rule moves
   p(t_j)·Π p(t_{j+l}) from the realised token's candidate to the student's token. Boundaries
   that cross: no KD.

End of turn: the teacher's distribution at the position that predicts its end-of-turn token is not
stored (generation stops there), so the student's end-of-turn position gets cross-entropy only.
Where a stored top-k lists the teacher's end-of-turn token (the teacher considered stopping), its
mass goes to the student's end-of-turn id through ``special_map``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, get_args

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from avocado_llm.distill.losses import TeacherTargets

PieceKind = Literal["byte_level", "sentencepiece", "text"]
"""How a teacher's vocabulary pieces spell bytes: GPT-2 byte-level (``Ġ``), SentencePiece (``▁``,
``<0xNN>``), or decoded text (API teachers)."""
Span = tuple[int, int]
"""[start, end) in bytes of the UTF-8 text."""
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPECIAL_LOOKING = re.compile(r"<\|[^<>|]+\|>|</?[a-z_]+>")
"""``<|im_end|>``, ``<eos>``, ``</s>``, ``<end_of_turn>``: control tokens, never text."""


def _byte_level_table() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable character → byte."""
    byte_values = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(byte_values)
    for b in range(256):
        if b not in byte_values:  # unprintable bytes get the characters from U+0100 on
            byte_values.append(b)
            chars.append(256 + len(chars) - 188)
    return {chr(c): b for b, c in zip(byte_values, chars, strict=True)}


_BYTE_OF_CHAR = _byte_level_table()


def piece_bytes(piece: str, kind: PieceKind) -> bytes:
    """The bytes a vocabulary piece stands for: ``'Ġ4'`` → ``b' 4'`` (byte_level), ``'▁cat'`` →
    ``b' cat'`` and ``'<0xC3>'`` → ``b'\\xc3'`` (sentencepiece), UTF-8 of the string (text)."""
    if kind == "text":
        return piece.encode()
    if kind == "sentencepiece":
        if match := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(match[1], 16)])
        return piece.replace("▁", " ").encode()
    if kind == "byte_level":
        return b"".join(
            bytes([_BYTE_OF_CHAR[c]]) if c in _BYTE_OF_CHAR else c.encode() for c in piece
        )
    raise ValueError(f"unknown piece kind {kind!r}; use byte_level, sentencepiece or text")


def tokenizer_piece_kind(tokenizer: PreTrainedTokenizerBase) -> PieceKind:
    """``byte_level`` for a GPT-2-style byte-level tokenizer, else ``sentencepiece``."""
    backend = tokenizer.backend_tokenizer
    byte_level = "ByteLevel" in f"{backend.pre_tokenizer!r}{backend.decoder!r}"
    return "byte_level" if byte_level else "sentencepiece"


def _student_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[Span]]:
    """The student's ids for ``text`` and their byte spans, which tile the text's bytes."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    kind = tokenizer_piece_kind(tokenizer)
    spelled = [piece_bytes(p, kind) for p in pieces]
    if b"".join(spelled) == text.encode():
        # The pieces spell the text: their lengths are the spans, whatever the offsets say
        # (a ByteLevel post-processor with trim_offsets leaves "Ġword"'s space out of them).
        ends = list(accumulate(len(b) for b in spelled))
        return ids, [(end - len(b), end) for end, b in zip(ends, spelled, strict=True)]
    byte_at = [0, *accumulate(len(c.encode()) for c in text)]  # character → byte offset
    spans: list[Span] = []
    cursor = 0
    for n, ((s, e), piece) in enumerate(zip(offsets, pieces, strict=True)):
        # Tokens that split one character (byte fallback, byte-level BPE) share its offsets:
        # the bytes are handed out in order, each token taking its piece's length.
        start, end = max(byte_at[s], cursor), byte_at[e]
        if n + 1 < len(offsets) and offsets[n + 1][0] < e:
            end = start + len(piece_bytes(piece, kind))
        if start != cursor or not start <= end <= byte_at[e]:
            raise ValueError(
                f"the student's tokens of {text!r} do not tile its bytes: token {n} ({piece!r}) "
                f"spans bytes {start}..{end} after byte {cursor}; the tokenizer must give "
                "character offsets that cover the text without gaps"
            )
        spans.append((start, end))
        cursor = end
    if cursor != len(text.encode()):
        raise ValueError(f"the student's tokens of {text!r} stop at byte {cursor}")
    return ids, spans


def student_byte_spans(tokenizer: PreTrainedTokenizerBase, text: str) -> list[Span]:
    """Byte spans of the student's tokens of ``text`` (no special tokens added); they tile it."""
    return _student_tokens(tokenizer, text)[1]


def teacher_byte_spans(tokens: Sequence[str], kind: PieceKind, completion: str) -> list[Span]:
    """Byte spans of a teacher's generated pieces; a ValueError unless they spell ``completion``."""
    lengths = [len(piece_bytes(t, kind)) for t in tokens]
    spelled = b"".join(piece_bytes(t, kind) for t in tokens)
    if spelled != completion.encode():
        raise ValueError(
            f"the teacher's tokens spell {spelled[:200]!r}, not the completion "
            f"{completion.encode()[:200]!r}, so its top-k describes another text; re-score the "
            "completion with the teacher (a prefill pass) or drop this teacher for this example"
        )
    ends = list(accumulate(lengths))
    return [(end - n, end) for end, n in zip(ends, lengths, strict=True)]


def trim_to_completion(
    tokens: Sequence[str], kind: PieceKind, completion: str
) -> tuple[int, int, int]:
    """``(start, stop, cut)``: the slice of ``tokens`` that spells ``completion`` when the
    harvest kept more than the text — whitespace before it (a base model's answer after
    "Answer:" starts with a space the stored text strips: a token of its own, or, for decoded
    ``text`` pieces, ``cut`` characters at the start of the first kept token) and end-of-turn
    control tokens or whitespace-only tokens after it (a vLLM server lists ``<|im_end|>`` among
    the generated tokens). ``(0, len(tokens), 0)`` when nothing needs trimming or it does not
    help."""
    start, stop = 0, len(tokens)
    target = completion.encode()

    def spelled() -> bytes:
        return b"".join(piece_bytes(t, kind) for t in tokens[start:stop])

    if spelled() == target:
        return start, stop, 0
    while stop > start and (
        _SPECIAL_LOOKING.fullmatch(tokens[stop - 1])
        or not piece_bytes(tokens[stop - 1], kind).strip()
    ):
        stop -= 1
    while start < stop and not piece_bytes(tokens[start], kind).strip():
        start += 1
    if spelled() == target:
        return start, stop, 0
    if kind == "text" and start < stop:
        first = tokens[start]
        cut = len(first) - len(first.lstrip())
        if cut and (first[cut:] + "".join(tokens[start + 1 : stop])).encode() == target:
            return start, stop, cut
    return 0, len(tokens), 0


def pair_positions(student_spans: Sequence[Span], teacher_spans: Sequence[Span]) -> list[Span]:
    """(i, j) for every teacher token j that starts where a student token i starts. O(N_S+N_T);
    empty tokens are never paired."""
    starts = [(a, i) for i, (a, b) in enumerate(student_spans) if b > a]
    pairs, k = [], 0
    for j, (a, b) in enumerate(teacher_spans):
        while k < len(starts) and starts[k][0] < a:
            k += 1
        if b > a and k < len(starts) and starts[k][0] == a:
            pairs.append((starts[k][1], j))
    return pairs


class CandidateMapper:
    """Teacher vocabulary piece → student id, or ``None`` for REST (design C), cached per piece.

    ``special_map`` sends teacher control pieces to student ids (``'<|im_end|>'`` → the id of
    ``'</s>'``); other control pieces (``teacher_specials``, or anything shaped like
    ``<|…|>``/``<eos>``) go to REST.
    """

    def __init__(
        self,
        student_tokenizer: PreTrainedTokenizerBase,
        kind: PieceKind,
        special_map: Mapping[str, int] | None = None,
        teacher_specials: Iterable[str] = (),
        cache_size: int = 1 << 18,
    ) -> None:
        if kind not in get_args(PieceKind):
            raise ValueError(f"unknown piece kind {kind!r}; use byte_level, sentencepiece or text")
        self.tokenizer, self.kind = student_tokenizer, kind
        self.special_map = dict(special_map or {})
        self.teacher_specials = frozenset(teacher_specials)
        self._student_specials = set(student_tokenizer.all_special_ids)
        self._by_bytes = self._student_vocabulary()
        self.student_id: Callable[[str, bytes], int | None] = functools.lru_cache(cache_size)(
            self._map
        )

    def _student_vocabulary(self) -> dict[bytes, int]:
        """Bytes → student id; a real piece wins over a byte-fallback piece with the same bytes."""
        kind = tokenizer_piece_kind(self.tokenizer)
        added = self.tokenizer.added_tokens_decoder
        byte_pieces: dict[bytes, int] = {}
        pieces: dict[bytes, int] = {}
        for piece, sid in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            if sid in self._student_specials:
                continue
            data = added[sid].content.encode() if sid in added else piece_bytes(piece, kind)
            fallback = kind == "sentencepiece" and _BYTE_PIECE.fullmatch(piece)
            (byte_pieces if fallback else pieces).setdefault(data, sid)
        return {**byte_pieces, **pieces}

    def _map(self, piece: str, lead: bytes = b"") -> int | None:
        """``lead``: bytes the student's token holds before the teacher's (a template's space)."""
        if piece in self.special_map:
            return self.special_map[piece]
        if piece in self.teacher_specials or _SPECIAL_LOOKING.fullmatch(piece):
            return None
        data = lead + piece_bytes(piece, self.kind)
        if data in self._by_bytes:
            return self._by_bytes[data]
        try:
            text = data.decode()
        except UnicodeDecodeError as error:  # a piece that ends inside a character
            text = data[: error.start].decode()
            if not text:
                return self._by_bytes.get(data[:1])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return ids[0] if ids and ids[0] not in self._student_specials else None


SHARED_MAPPERS = 8
"""How many mappers :func:`shared_mapper` keeps (one per student tokenizer, kind and map)."""
_shared: dict[tuple, CandidateMapper] = {}


def shared_mapper(
    student_tokenizer: PreTrainedTokenizerBase,
    kind: PieceKind,
    special_map: Mapping[str, int] | None = None,
) -> CandidateMapper:
    """One :class:`CandidateMapper` per student tokenizer, piece kind and special map, reused by
    every :func:`kd_targets` call that passes none: building one reads the student's whole
    vocabulary (49k pieces for SmolLM2), which per example cost real-small's ``single`` ablation
    (5,108 examples) over ten minutes and gigabytes before its first step."""
    key = (id(student_tokenizer), kind, tuple(sorted((special_map or {}).items())))
    mapper = _shared.get(key)
    if mapper is None or mapper.tokenizer is not student_tokenizer:  # an id reused
        if len(_shared) >= SHARED_MAPPERS:
            _shared.pop(next(iter(_shared)))
        mapper = _shared[key] = CandidateMapper(student_tokenizer, kind, special_map)
    return mapper


@dataclass(frozen=True)
class KDTargets:
    """One example's targets for one teacher, P positions."""

    positions: Tensor
    """(P,) long: indices of student tokens in ``prefix + completion + suffix``."""
    ids: Tensor
    """(P, K') long student ids, padded with prob 0."""
    probs: Tensor
    """(P, K') float32; with ``rest`` each row sums to 1."""
    rest: Tensor
    """(P,) float32: the teacher's mass on every other student id."""


STORED_ROUNDING = 1e-4
"""A positive stored log-probability up to this is rounding: probability 1."""


def probability(logprob: float) -> float:
    """``exp(logprob)`` of a stored log-probability, never an OverflowError: a value that is no
    log-probability (NaN, +inf, positive past rounding; harvests made before the endpoint
    teacher refused them may hold some) gives NaN, which training refuses with a clear error
    rather than learn from a made-up number; -inf gives 0."""
    if math.isnan(logprob) or logprob > STORED_ROUNDING:
        return math.nan
    return math.exp(min(logprob, 0.0))


def _scatter(
    mapper: CandidateMapper, pieces: Sequence[str], logprobs: Sequence[float], lead: bytes
) -> tuple[dict[int, float], float]:
    """Candidate probabilities summed onto their student ids; REST = 1 − Σ top-k + unmapped."""
    q: dict[int, float] = {}
    listed = unmapped = 0.0
    for piece, logprob in zip(pieces, logprobs, strict=True):
        p = probability(logprob)
        listed += p
        sid = mapper.student_id(piece, lead)
        if sid is None:
            unmapped += p
        else:
            q[sid] = q.get(sid, 0.0) + p
    return q, max(0.0, 1.0 - listed) + unmapped


def kd_targets(
    student_tokenizer: PreTrainedTokenizerBase,
    completion_text: str,
    teacher_tokens: Sequence[str],
    teacher_top_tokens: Sequence[Sequence[str]],
    teacher_top_logprobs: Sequence[Sequence[float]],
    teacher_token_logprobs: Sequence[float] | None,
    kind: PieceKind,
    special_map: Mapping[str, int] | None = None,
    *,
    chain_rule: bool = True,
    mapper: CandidateMapper | None = None,
    prefix: str = "",
    suffix: str = "",
) -> KDTargets:
    """A teacher's stored top-k for ``completion_text``, as sparse targets over the student's ids.

    The student tokenises ``prefix + completion_text + suffix`` (what its template renders as the
    answer, e.g. ``" " + text + " </s>"``); positions index those tokens. Pass a ``mapper`` built
    once per teacher to reuse its cache (its own ``special_map`` then applies). With
    ``chain_rule=False``, no KD where teacher tokens are shorter than the student's. A ValueError
    when the teacher's tokens do not spell the completion.
    """
    if mapper is None:
        mapper = shared_mapper(student_tokenizer, kind, special_map)
    elif mapper.tokenizer is not student_tokenizer or mapper.kind != kind:
        raise ValueError("the mapper was built for another student tokenizer or piece kind")
    start, stop, cut = trim_to_completion(teacher_tokens, kind, completion_text)
    if (start, stop, cut) != (0, len(teacher_tokens), 0):
        teacher_tokens = list(teacher_tokens[start:stop])
        teacher_top_tokens = [list(top) for top in teacher_top_tokens[start:stop]]
        teacher_top_logprobs = teacher_top_logprobs[start:stop]
        if teacher_token_logprobs is not None:
            teacher_token_logprobs = teacher_token_logprobs[start:stop]
        if cut:  # the stripped whitespace: off the first token and its alternatives that have it
            lead = teacher_tokens[0][:cut]
            teacher_tokens[0] = teacher_tokens[0][cut:]
            teacher_top_tokens[0] = [
                p[cut:] if p.startswith(lead) and len(p) > cut else "<|rest|>"
                for p in teacher_top_tokens[0]
            ]
    text = prefix + completion_text + suffix
    student_ids, s_spans = _student_tokens(student_tokenizer, text)
    offset = len(prefix.encode())
    spans = teacher_byte_spans(teacher_tokens, kind, completion_text)
    t_spans = [(a + offset, b + offset) for a, b in spans]
    lead = b""
    seam = next((a for a, b in s_spans if a < offset < b), None)
    if t_spans and seam is not None:
        # The student's token at the seam starts in the prefix (Llama's "▁The" after "[/INST]"):
        # it predicts the prefix's tail then the teacher's first token, so pair them with that lead.
        lead = text.encode()[seam:offset]
        t_spans[0] = (seam, t_spans[0][1])
    end_of = {b: j for j, (_, b) in enumerate(t_spans)}
    rows: list[tuple[int, dict[int, float], float]] = []
    for i, j in pair_positions(s_spans, t_spans):
        if not teacher_top_tokens[j]:
            continue  # no alternatives stored here
        head = lead if j == 0 else b""
        q, rest = _scatter(mapper, teacher_top_tokens[j], teacher_top_logprobs[j], head)
        if t_spans[j][1] < s_spans[i][1]:  # the student's token covers several teacher tokens
            last = end_of.get(s_spans[i][1])
            if not chain_rule or teacher_token_logprobs is None or last is None:
                continue  # crossing boundaries, or the chain rule is off
            moved = math.prod(probability(lp) for lp in teacher_token_logprobs[j : last + 1])
            realised = teacher_tokens[j]
            source = (
                mapper.student_id(realised, head) if realised in teacher_top_tokens[j] else None
            )
            take = min(moved, q[source] if source is not None else rest)
            if source is None:
                rest -= take
            else:
                q[source] -= take
            q[student_ids[i]] = q.get(student_ids[i], 0.0) + take
        rows.append((i, q, rest))
    return _pack(rows)


def _pack(rows: Sequence[tuple[int, dict[int, float], float]]) -> KDTargets:
    """Rows of (position, {student id: prob}, rest) as padded tensors, each row renormalised."""
    width = max((len(q) for _, q, _ in rows), default=0) or 1
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    probs = torch.zeros(len(rows), width)
    rest = torch.zeros(len(rows))
    for n, (_, q, r) in enumerate(rows):
        total = sum(q.values()) + r  # 1 up to rounding of the stored log-probs
        ids[n, : len(q)] = torch.tensor(list(q), dtype=torch.long)
        probs[n, : len(q)] = torch.tensor(list(q.values())) / total
        rest[n] = r / total
    positions = torch.tensor([i for i, _, _ in rows], dtype=torch.long)
    return KDTargets(positions, ids, probs, rest)


def collate_targets(items: Sequence[tuple[int, int, KDTargets]]) -> TeacherTargets:
    """One teacher's targets for a batch from ``(example, logit_offset, targets)`` items.

    ``logit_offset`` is the index of the logits that predict the example's first answer token
    (prompt length − 1 for a causal LM fed the whole sequence, its labels shifted by one).
    """
    width = max((t.ids.shape[1] for _, _, t in items), default=1)

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    def cat(parts: list[Tensor], empty: Tensor) -> Tensor:
        return torch.cat(parts) if parts else empty

    return TeacherTargets(
        batch=cat([torch.full_like(t.positions, b) for b, _, t in items], torch.zeros(0).long()),
        time=cat([t.positions + off for _, off, t in items], torch.zeros(0).long()),
        ids=cat([pad(t.ids) for _, _, t in items], torch.zeros(0, width).long()),
        probs=cat([pad(t.probs) for _, _, t in items], torch.zeros(0, width)),
        rest=cat([t.rest for _, _, t in items], torch.zeros(0)),
    )
