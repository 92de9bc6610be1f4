"""What an answer repeats of its question: the rules behind the ``short`` and ``number``
verifiers' reading of an answer that restates the question (:mod:`avocado_llm.data.verifiers`).

Real chat models answer in a sentence that echoes the question: "Paris is the capital of
France." for "What is the capital of France?", "There are 7000 grams in 7 kilograms." for "How
many grams are in 7 kilograms?". Given the question, the verifiers can tell its words (and
numbers) from the answer's own:

- :func:`restates`: the reference opens the sentence and every other word is one the question
  asked (in the question's order) or a stop word ("the", "is", "of"). (A reference that closes
  a statement is the ``short`` verifier's plain rule.)
- :func:`new_value`: the one number of a sentence that the question did not state.

:func:`question_of` says what the question of a chat is (its last user message).

Both work on words and numbers already read by the verifiers (case and accents folded, numbers
parsed); this module only decides. Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STOP_WORDS = frozenset(
    {"a", "an", "the", "of", "is", "are", "was", "were", "be", "it", "its", "it's", "this",
     "that", "in", "on", "at", "to", "for", "from", "by", "as", "with", "called", "named",
     "known", "has", "have", "there"}
)  # fmt: skip
"""Words a restatement may add that the question did not ask ("Paris *is* the capital...")."""
REFUSED = frozenset(
    {"or", "and", "nor", "but", "either", "maybe", "perhaps", "possibly", "probably", "might",
     "also", "both", "than", "versus", "vs"}
)  # fmt: skip
"""Words that bring a second candidate or a hedge: never part of an echo, even when the
question has them ("Paris or Lyon")."""
CHOICE = frozenset({"or", "either", "whether"})
"""A question with one of these offers candidates: its words may be a rival answer, so no
echo is read there (the plain rules still apply)."""

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]  # fmt: skip
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS: dict[str, float] = {w: float(i) for i, w in enumerate(_UNITS)} | {
    w: float(20 + 10 * i) for i, w in enumerate(_TENS)
}
"""Number words a question may state its numbers in ("How many cents are in one dollar?")."""
_COMPOUND = re.compile(rf"\b({'|'.join(_TENS)})[-\s]({'|'.join(_UNITS[1:10])})\b")


def question_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The question a chat asks: its last user message's text (text parts joined). Fusion,
    evaluation and lm-eval all give a verifier this text as its ``question``."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return "" if content is None else str(content)
    return ""


def _bare(word: str) -> str:
    """A possessive echoes its noun: "france's" → "france"."""
    return re.sub(r"['’]s$", "", word)


def _in_order(words: list[str], asked: list[str]) -> bool:
    """Whether ``words`` appear in ``asked`` in the same order (a subsequence)."""
    rest = iter(asked)
    return all(any(w == a for a in rest) for w in words)


def _occurs(part: list[str], whole: list[str]) -> bool:
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def restates(words: list[str], gold: list[str], asked: list[str]) -> bool:
    """Whether a sentence (its ``words``) restates the question (``asked``, its words) with the
    reference (``gold``) as the answer: the reference occurs once and opens the sentence (after
    stop words only); every other word is a stop word or one the question asked, never
    punctuation, a joiner or a hedge ("Paris, Lyon", "Paris or Lyon"); the question's words
    come in the question's order ("Bangladesh is the capital of Dhaka" reverses "Dhaka is the
    capital of which country?"). A question that offers candidates ("Paris or Lyon?") or
    names the reference itself is never read this way: its words may be a rival answer, and
    its echo would name the reference ("Vilnius is the capital of which country?").

    "The opposite of cold is hot." does not answer "What is the opposite of hot?" with "cold":
    a reference inside the sentence is refused; and so is one that closes it after nothing but
    the question's words ("lime green" for "What colour is a lime?"): that is the plain rule's
    to judge, with its linking word."""
    n = len(gold)
    if not n or not asked or CHOICE & set(asked) or _occurs(gold, asked):
        return False
    spots = [i for i in range(len(words) - n + 1) if words[i : i + n] == gold]
    if len(spots) != 1:
        return False
    before, after = words[: spots[0]], words[spots[0] + n :]
    if any(w not in STOP_WORDS for w in before):  # the reference does not open the sentence
        return False
    others = [_bare(w) for w in before + after]
    known = {_bare(a) for a in asked}
    if any(not w[0].isalnum() or w in REFUSED or (w not in STOP_WORDS and w not in known)
           for w in others):  # fmt: skip
        return False
    content = [w for w in others if w not in STOP_WORDS]
    return _in_order(content, [_bare(a) for a in asked if _bare(a) not in STOP_WORDS])


def word_values(text: str) -> list[float]:
    """The numbers ``text`` states in words: "seven" → 7, "twenty-one" → 21 (lower case)."""
    lower = text.lower()
    values = [NUMBER_WORDS[t] + NUMBER_WORDS[u] for t, u in _COMPOUND.findall(lower)]
    rest = _COMPOUND.sub(" ", lower)
    return values + [NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", rest) if w in NUMBER_WORDS]


def _stated(value: float, stated: Iterable[float]) -> bool:
    return any(math.isclose(value, s, rel_tol=1e-9, abs_tol=1e-12) for s in stated)


def new_value(values: list[float], stated: list[float]) -> float | None:
    """The answer's number when the sentence's last number (of ``values``) is one the question
    ``stated`` (an echo, "…in 7 kilograms"): the one distinct value of the sentence that the
    question did not state; ``None`` when the last number is no echo, or when the sentence
    states no new value or several ("7000 or 700 grams in 7 kilograms")."""
    if not values or not _stated(values[-1], stated):
        return None
    new: list[float] = []
    for v in values:
        if not _stated(v, stated) and not _stated(v, new):
            new.append(v)
    return new[0] if len(new) == 1 else None
