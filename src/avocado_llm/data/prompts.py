"""Prompt rows from the recipe's ``data.sources``: ids, splits, dedup, decontamination, checks.

Each row of a source becomes a :class:`PromptRow`: the chat to send (the system prompt first,
then the conversation up to, not including, a trailing assistant turn), its reference answer
(the ``reference`` column, or else that trailing assistant turn), and its split. Rules:

- **Normalized prompt**: each message's role and its text after Unicode NFKC, casefolding and
  whitespace collapsed to single spaces. The row's ``id`` is a hash of it, so two rows that
  differ only in case or spacing are one prompt; the second is a *duplicate* and dropped.
- **Split**: ``heldout`` when the id's hash, read as a number in [0, 1), is below the source's
  ``heldout_fraction``: the same on every run and in every row order, and a prompt is never in
  both splits. With ``split_by``, the hash of that column's normalized value decides instead, so
  a group's rows (one question in several chats, one document) share a side.
- **Decontamination**: a training row whose user text (normalized, without the system prompt)
  equals a held-out row's, or shares a run of :data:`NGRAM` words with one, is dropped from
  *train* (held-out rows of every source count; see :data:`LONG_PROMPT_WORDS` for long ones).
  So is a training row that asks a held-out question *with its answer*: its last user turn and
  reference, or an earlier user turn and the assistant turn after it, equal to a held-out row's
  last user turn and reference (the same item in another chat: the held-out answer must not be
  taught, nor shown to the student as context). Generic turns ("Why?") with other answers stay.
  Pass one over the sources collects the held-out side (hashes only); pass two streams rows.
- **Bad rows** (malformed JSON, non-UTF-8 bytes, a missing column, an empty prompt, a chat
  that does not end with a user turn, a prompt over ``max_prompt_tokens``, a repeated
  ``id``-column value): with ``on_error: skip`` they are counted and skipped; with ``fail`` the
  source is read to its end and a :class:`DataError` lists the first ten and the count.

Memory stays bounded by the hashes kept (a few tens of bytes per prompt), never the rows.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from avocado_llm.config.sources import SourceConfig
from avocado_llm.data.sources import DataError, Reader, missing_column, open_source

NGRAM = 13
"""Words in the n-grams that decontamination compares (a shared 13-word run is a leak)."""
LONG_PROMPT_WORDS = 64
"""A held-out prompt longer than this keeps a quarter of its n-grams (chosen by their hash, so
the same ones wherever they occur): a training prompt sharing a 13-word run with it is found
with probability 1/4, a 30-word run with over 99%; memory grows 4 times slower with length."""
CHARS_PER_TOKEN = 8
"""The cheap bound of ``max_prompt_tokens``: a prompt longer than this many characters per
allowed token is refused without tokenizing it."""
MAX_ERRORS = 10
"""Bad rows described one by one in a report or a DataError; the rest are counted."""
ROLES = ("system", "user", "assistant")

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a source, ready to send to a teacher."""

    id: str
    """Hash of the normalized prompt conversation (system prompt included)."""
    source: str
    """The source's name."""
    messages: list[dict[str, str]]
    """The chat: the system prompt first (if any), then the turns up to the next answer."""
    reference: str | None
    """The reference answer, or None for an open-ended prompt."""
    split: Split
    """``train`` or ``heldout``."""
    where: str
    """Where the row was read (``support.jsonl line 3``)."""


@dataclass
class SourceReport:
    """What reading one source found."""

    rows: int = 0
    train: int = 0
    heldout: int = 0
    duplicates: int = 0
    contaminated: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    """The first :data:`MAX_ERRORS` bad rows, ``where: what``."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Bad rows by kind, e.g. ``{"malformed JSON": 3}``."""

    def bad(self, reason: str, message: str) -> None:
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def as_json(self) -> dict[str, Any]:
        """The ``avocado data check --json`` entry of this source."""
        keys = ("rows", "train", "heldout", "duplicates", "contaminated", "skipped", "errors")
        return {k: getattr(self, k) for k in keys}


@dataclass
class HeldoutIndex:
    """The held-out side of every source, as hashes: exact user texts and their n-grams."""

    exact: set[int] = field(default_factory=set)
    ngrams: set[int] = field(default_factory=set)
    answered: set[int] = field(default_factory=set)
    """Held-out (last user turn, reference) pairs, for rows that have a reference."""

    def add(self, words: list[str], question: str | None = None, answer: str | None = None) -> None:
        if question is not None and answer is not None:
            self.answered.add(_pair(question, answer))
        self.exact.add(hash(" ".join(words)))
        if len(words) <= LONG_PROMPT_WORDS:
            self.ngrams.update(_ngrams(words))
        else:  # a content-defined quarter: any shared 30-word run is still found (> 99%)
            self.ngrams.update(g for g in _ngrams(words) if g % 4 == 0)

    def leaks(
        self,
        words: list[str],
        messages: list[dict[str, str]] | None = None,
        reference: str | None = None,
    ) -> bool:
        """Whether a training prompt's user text matches a held-out one, or it asks a held-out
        question with that question's reference: as its own last turn and ``reference``, or in
        its earlier turns (``messages``) with the assistant's reply."""
        if hash(" ".join(words)) in self.exact or self._answers(messages or [], reference):
            return True
        return bool(self.ngrams) and any(g in self.ngrams for g in _ngrams(words))

    def _answers(self, messages: list[dict[str, str]], reference: str | None) -> bool:
        if not (self.answered and messages):
            return False
        asked = [(messages[-1]["content"], reference)] if reference is not None else []
        turns = [m for m in messages if m["role"] != "system"]
        asked += [
            (ask["content"], reply["content"])
            for ask, reply in pairwise(turns)
            if (ask["role"], reply["role"]) == ("user", "assistant")
        ]
        return any(_pair(q, a) in self.answered for q, a in asked)


def _pair(question: str, answer: str) -> int:
    return hash((normalize(question), normalize(answer)))


def _ngrams(words: list[str]) -> Iterator[int]:
    for i in range(len(words) - NGRAM + 1):
        yield hash(tuple(words[i : i + NGRAM]))


def normalize(text: str) -> str:
    """The text compared for duplicates and leaks: NFKC, casefolded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_id(messages: list[dict[str, str]]) -> str:
    """A stable hash (32 hex digits) of the normalized conversation."""
    key = "\x1e".join(f"{m['role']}\x1f{normalize(m['content'])}" for m in messages)
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def split_of(row_id: str, heldout_fraction: float) -> Split:
    """``heldout`` for the share ``heldout_fraction`` of ids, by the id's own hash."""
    return "heldout" if int(row_id[:16], 16) / 2**64 < heldout_fraction else "train"


# --- one row ----------------------------------------------------------------------------------


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Layout:
    """How a source's rows become chats: the columns the recipe names, checked once."""

    source: SourceConfig
    system_column: str | None
    wanted: list[str]
    known_columns: list[str] | None


def _layout(source: SourceConfig, reader: Reader, first: dict[str, Any] | None) -> _Layout:
    columns = reader.columns if reader.columns is not None else list(first or {})
    named = [source.messages or source.prompt, source.reference, source.id, source.split_by]
    for name in named:
        if name is not None and reader.columns is not None and name not in reader.columns:
            raise DataError(missing_column(name, reader.columns, str(source.path)))
    system_column = (
        source.system if source.system is not None and source.system in columns else None
    )
    wanted = [c for c in (*named, system_column) if c is not None]
    return _Layout(source, system_column, wanted, reader.columns)


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _BadRow("non-UTF-8 bytes", f"non-UTF-8 bytes in {what}") from error
    if not isinstance(value, str):
        if isinstance(value, dict | list):
            raise _BadRow("bad value", f"{what} is a {type(value).__name__}, not text")
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a byte kept by surrogateescape (CSV)
        raise _BadRow("non-UTF-8 bytes", f"non-UTF-8 bytes in {what}") from error
    return value


def _column(values: dict[str, Any], name: str) -> Any:
    if name not in values:
        raise _BadRow("missing column", missing_column(name, list(values)))
    return values[name]


def _chat(value: Any, column: str) -> list[dict[str, str]]:
    if isinstance(value, str | bytes):
        try:
            value = json.loads(_text(value, column))
        except json.JSONDecodeError as error:
            raise _BadRow("bad messages", f"{column!r} is not a JSON chat ({error.msg})") from error
    if not isinstance(value, list):
        raise _BadRow("bad messages", f"{column!r} is not a list of {{role, content}}")
    chat = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _BadRow("bad messages", f"{column}[{i}] is not a {{role, content}} mapping")
        role = turn["role"]
        if role not in ROLES:
            raise _BadRow("bad messages", f"{column}[{i}] has role {role!r}; use {ROLES}")
        content = "" if turn["content"] is None else _text(turn["content"], f"{column}[{i}]")
        chat.append({"role": role, "content": content})
    return chat


def _prompt(layout: _Layout, values: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    source = layout.source
    reference = None
    if source.messages is not None:
        chat = _chat(_column(values, source.messages), source.messages)
        if chat and chat[-1]["role"] == "assistant":
            reference = chat.pop()["content"]  # the answer to learn, not part of the prompt
        if not any(m["role"] == "user" and m["content"].strip() for m in chat):
            raise _BadRow("empty prompt", "empty prompt (no user turn with text)")
        if chat[-1]["role"] != "user":
            raise _BadRow("bad messages", "the chat does not end with a user turn")
    else:
        value = _column(values, source.prompt or "")
        text = "" if value is None else _text(value, repr(source.prompt))
        if not text.strip():
            raise _BadRow("empty prompt", "empty prompt")
        chat = [{"role": "user", "content": text}]
    system = source.system
    if layout.system_column is not None:
        value = values.get(layout.system_column)
        system = None if value is None else _text(value, repr(layout.system_column))
    if system and system.strip() and chat[0]["role"] != "system":  # a chat's own one wins
        chat.insert(0, {"role": "system", "content": system})
    if source.reference is not None:
        value = _column(values, source.reference)
        if isinstance(value, list | tuple) and all(
            isinstance(item, str | int | float) and not isinstance(item, bool) for item in value
        ):  # a list answer (a `sequence` reference stored as a list): its items, as text
            value = ", ".join(str(item) for item in value)
        reference = None if value is None else _text(value, repr(source.reference))
    limit = source.max_prompt_tokens
    length = sum(len(m["content"]) for m in chat)
    if limit is not None and length > limit * CHARS_PER_TOKEN:
        detail = (
            f"prompt too long: {length:,} characters cannot fit in max_prompt_tokens {limit:,} "
            f"(more than {CHARS_PER_TOKEN} characters a token)"
        )
        raise _BadRow("prompt too long", detail)
    return chat, reference


# --- one pass over a source -------------------------------------------------------------------


def _user_words(messages: list[dict[str, str]]) -> list[str]:
    return normalize(" ".join(m["content"] for m in messages if m["role"] == "user")).split()


def _read(source: SourceConfig, report: SourceReport) -> Iterator[PromptRow]:
    """The source's rows, deduplicated, each with its split (``report`` counts what is read,
    duplicates and bad rows; the caller counts train / held-out). A ``fail`` source with bad
    rows raises :class:`DataError` once it has been read to its end."""
    reader = open_source(source.path)
    layout = None if reader.columns is None else _layout(source, reader, None)
    records = reader.records(layout.wanted if layout else None)
    seen: set[int] = set()
    seen_ids: set[int] = set()
    for record in records:
        if source.limit is not None and report.rows >= source.limit:
            break
        report.rows += 1
        if layout is None:
            layout = _layout(source, reader, record.values)
        if record.values is None:
            report.bad(record.reason, f"{record.where}: {record.problem}")
            continue
        try:
            messages, reference = _prompt(layout, record.values)
            if source.id is not None:
                own = _text(_column(record.values, source.id), repr(source.id))
                key = hash(own)
                if key in seen_ids:
                    raise _BadRow("duplicate id", f"duplicate id {own!r} in column {source.id!r}")
                seen_ids.add(key)
            group = _group(record.values, source.split_by) if source.split_by else None
        except _BadRow as bad:
            report.bad(bad.reason, f"{record.where}: {bad}")
            continue
        row_id = prompt_id(messages)
        key = int(row_id[:16], 16)
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        split = split_of(group or row_id, source.heldout_fraction)
        yield PromptRow(row_id, source.name, messages, reference, split, record.where)
    if source.on_error == "fail" and report.skipped:
        raise DataError(_failure(source, report))


def _group(values: dict[str, Any], column: str) -> str:
    """The split key of a row's ``split_by`` group: a hash of its normalized value."""
    value = _column(values, column)
    text = "" if value is None else _text(value, repr(column))
    if not normalize(text):
        raise _BadRow("empty split_by", f"empty {column!r} (the split_by column)")
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def _failure(source: SourceConfig, report: SourceReport) -> str:
    shown = "".join(f"\n  {e}" for e in report.errors)
    more = f"\n  … and {report.skipped - len(report.errors)} more" if report.skipped > 10 else ""
    reasons = ", ".join(f"{n} {r}" for r, n in report.reasons.most_common())
    return (
        f"source {source.name!r} ({source.path}): {report.skipped} bad rows ({reasons}):"
        f"{shown}{more}\nfix them, or set on_error: skip on the source to count and skip them"
    )


# --- the public API ---------------------------------------------------------------------------


def heldout_index(sources: Iterable[SourceConfig]) -> HeldoutIndex:
    """Pass one: the held-out prompts of every source, as hashes (raises DataError)."""
    index = HeldoutIndex()
    for source in sources:
        for row in _read(source, SourceReport()):
            if row.split == "heldout":
                last = row.messages[-1]["content"] if row.messages else None
                index.add(_user_words(row.messages), last, row.reference)
    return index


def prompt_rows(
    source: SourceConfig,
    split: Split,
    index: HeldoutIndex,
    report: SourceReport | None = None,
) -> Iterator[PromptRow]:
    """Pass two: the source's rows of ``split``, training rows that leak a held-out prompt of
    ``index`` left out. ``report``, if given, is filled in for both splits as the rows go by."""
    report = report if report is not None else SourceReport()
    for row in _read(source, report):
        if row.split == "heldout":
            report.heldout += 1
        elif index.leaks(_user_words(row.messages), row.messages, row.reference):
            report.contaminated += 1
            continue
        else:
            report.train += 1
        if row.split == split:
            yield row


def check_sources(sources: list[SourceConfig]) -> dict[str, SourceReport]:
    """Read every source twice (no model is called) and say what was found in each."""
    index = heldout_index(sources)
    reports = {}
    for source in sources:
        reports[source.name] = SourceReport()
        for _ in prompt_rows(source, "train", index, reports[source.name]):
            pass
    return reports


def iter_prompts(sources: list[SourceConfig], split: Split) -> Iterator[PromptRow]:
    """Every source's rows of ``split``, source after source: pass one (the held-out index)
    runs first, so a ``fail`` source with bad rows raises before any row is given."""
    index = heldout_index(sources)
    for source in sources:
        yield from prompt_rows(source, split, index)
