"""Per-source verifiers: score a model's free-form answer against a source's reference answer.

A source names its verifier in the recipe (``verifier: number``); :func:`verifier` turns that
spec into a :class:`Verifier`, a callable ``(answer, reference, question=None) -> float`` in
[0, 1] (1 = correct; every verifier here gives 0.0 or 1.0). ``question`` is the text the answer
answers (a chat's last user message: :func:`avocado_llm.data.echoes.question_of`); ``short``
and ``number`` read it, the others ignore it, and without it every verifier scores as it always
did. ``none`` (the default) is represented by *no* verifier: :func:`verifier` returns ``None``
and the pipeline uses label-free fusion and a
judge for that source. :func:`check_spec` says what is wrong with a spec before any work.

The specs:

- ``exact``: the final answer equals the reference after normalisation (case, whitespace,
  surrounding quotes / markdown, a leading "The answer is", trailing punctuation); the whole
  answer equal to the reference counts too (multi-line references).
- ``short``: a short answer, alone or ending the answer's first sentence: what ``exact``
  accepts, and also "The capital of France is Paris." — the first sentence's last words are
  the reference (case, accents, quotes and markdown ignored), after a linking word ("is",
  "are", "was", "as", "'s", ":", "="), and the answer is at most :data:`MAX_SHORT_WORDS`
  words with no negation anywhere ("not", "no", "never", "n't") and no second candidate in
  that sentence ("or", "maybe", "Paris, London", "Paris and London"). A bare echo of the
  question ("The past tense of cut") has no linking word and fails; so does a sentence whose
  answer is not at its end ("Paris is the capital of France." for "the capital of France?"):
  the verifier cannot tell the question's words from the answer, so it accepts the answer only
  at the end of a statement. Given the question, it also accepts a first sentence that
  restates it ("Paris is the capital of France."): the reference opens the sentence and every
  other word is the question's, in its order, or a stop word
  (:func:`avocado_llm.data.echoes.restates` has the rules).
- ``number``: the last number of the final answer equals the reference's number within a
  relative tolerance of 1e-6; thousands commas, signs (also "−"), decimals, exponents and
  percent ("50%" matches 50 and 0.5) are understood. A last number that is the right operand of
  an unfinished expression ("4 minus 2", "12 - 5": the question echoed) is no answer. Given
  the question, a last number that the question states (in digits or words) is an echo ("There
  are 7000 grams in 7 kilograms."): the sentence's one other value is the answer, when it has
  exactly one and no negation or hedge; else the last number still is.
- ``sequence``: the items of the final answer (comma, semicolon, space or "and" separated,
  brackets ignored) equal the reference's items, in order.
- ``choice``: a multiple-choice letter ("B", "(B)", "B) Paris", "The answer is B",
  "option B") equals the reference's letter; or, when the answer gives no letter, its text
  equals the reference's option text ("B) Paris" → "Paris").
- ``regex:<pattern>``: the final answer (or, when it is short, the whole answer) *fullmatches*
  the pattern (Python ``re``; add ``(?i)`` for case-insensitive); the reference is ignored.
  The pattern comes from the recipe's author, who is trusted: inputs are capped in length,
  but a pattern with catastrophic backtracking is the author's to avoid.
- ``math``: mathematical equivalence through the ``math-verify`` library ("x = 1/2",
  "\\frac{1}{2}" and "0.5" agree). Answers or references that could keep SymPy busy for ever
  (power towers, exponents of 7+ digits, big factorials, binomials, products, Gamma) score 0
  without being parsed (a heuristic list: see :data:`_MATH_BOMB`). Beyond
  that, math-verify's own timeouts use ``signal.alarm``, which works only in the main thread:
  there they are on (:data:`MATH_TIMEOUT_S`) unless the caller has an alarm of its own
  running (math-verify's would cancel it); in any other thread they are off.

**The final answer** of a model's text is found as the tiny world's verifiers expect it
(``world.tasks.normalize``), widened for real models' prose: the last ``\\boxed{...}``; else
the text after the last "answer is" / "Answer:" / "####" marker (to the end of its line); else
the last non-empty line. Answers are capped (the last :data:`MAX_ANSWER_CHARS` characters are
kept: the final answer is at the end) and so is the final answer (:data:`MAX_FINAL_CHARS`).

Scoring never raises: ``None`` scores as an empty answer, numbers and ``bytes`` are turned
into text, a list (a ``sequence`` reference stored as a list) is joined with ", ". An empty
reference scores 0 for every verifier that uses one.

Imports only the standard library, the recipe schema's names and :mod:`avocado_llm.data.echoes`;
``math-verify`` is imported on first use.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from avocado_llm.config.sources import VERIFIERS
from avocado_llm.data.echoes import new_value, restates, word_values
from avocado_llm.data.math_check import math_check

NAMES = VERIFIERS
"""Verifier names (the recipe schema's list); ``regex:<pattern>`` is the one spec with an
argument."""
REGEX_PREFIX = "regex:"

MAX_ANSWER_CHARS = 20_000
"""Longer answers keep only their last characters (the final answer is at the end)."""
MAX_FINAL_CHARS = 1_000
"""The final answer is cut to this many characters before any number, item or regex work."""
MAX_REGEX_WHOLE_CHARS = 4_000
"""``regex:`` also tries the whole answer when it is at most this long."""
MAX_SHORT_WORDS = 30
"""``short`` refuses longer answers (an essay that mentions the reference is no answer)."""
VERSIONS = {"short": 2, "number": 2}
"""The verifiers whose scores changed since their first version (2: they read the question):
scores made with an older version must be made again (:func:`versions`)."""

Check = Callable[[str, str, "str | None"], bool]
"""``check(answer, reference, question)``: whether the answer is right."""


@dataclass(frozen=True)
class Verifier:
    """A named scorer: ``verifier(answer, reference, question)`` is 1.0 when the answer is
    correct; ``question`` (optional) is the text the answer answers."""

    name: str
    """The spec it was built from (``number``, ``regex:^[0-9]+$``)."""
    check: Check

    def __call__(self, answer: object, reference: object, question: object = None) -> float:
        asked = None if question is None else _as_text(question)
        try:
            return 1.0 if self.check(_as_text(answer), _as_text(reference), asked) else 0.0
        except Exception:  # a verifier is a judge of text, never a crash of the pipeline
            return 0.0


def versions(specs: Iterable[str]) -> dict[str, Any]:
    """``{"verifiers": {spec: version}}`` for the specs of :data:`VERSIONS` among ``specs``, for
    a fingerprint; empty when there are none (fingerprints made before versions keep
    matching)."""
    used = {spec: VERSIONS[spec] for spec in sorted(set(specs)) if spec in VERSIONS}
    return {"verifiers": used} if used else {}


def check_spec(spec: object) -> str | None:
    """Why ``spec`` is no verifier spec (an unknown name, with the nearest one; a regex that
    does not compile), or ``None`` when it is fine."""
    if not isinstance(spec, str):
        return f"a verifier must be a string (one of {', '.join(NAMES)} or regex:<pattern>)"
    if spec.startswith(REGEX_PREFIX):
        pattern = spec[len(REGEX_PREFIX) :]
        if not pattern:
            return "regex: needs a pattern after the colon, e.g. regex:^[0-9]+$"
        try:
            re.compile(pattern)
        except re.error as error:
            return f"the pattern in {spec!r} does not compile: {error}"
        return None
    if spec in NAMES:
        return None
    if spec == "regex":
        return "regex needs a pattern: regex:<pattern>, e.g. regex:^[0-9]+$"
    close = difflib.get_close_matches(spec.lower(), [*NAMES, "regex"], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(NAMES)}"
    return f"unknown verifier {spec!r}: {hint} (or regex:<pattern>)"


def verifier(spec: str) -> Verifier | None:
    """The verifier a spec names; ``None`` for ``none`` (no verifier: label-free fusion).
    Raises ``ValueError`` with :func:`check_spec`'s message for a bad spec."""
    problem = check_spec(spec)
    if problem:
        raise ValueError(problem)
    if spec == "none":
        return None
    if spec.startswith(REGEX_PREFIX):
        return Verifier(spec, _regex_check(re.compile(spec[len(REGEX_PREFIX) :])))
    return Verifier(spec, _CHECKS[spec])


# --- text and the final answer -------------------------------------------------------------

# The same rules as the tiny world's ``world.tasks.normalize`` (copied, so that the verifiers of
# any source do not depend on the tiny world's module).
_PREFIX = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)\s*|it\s+is\s+|it's\s+|result\s*:\s*|=\s*)",
    re.IGNORECASE,
)
_WRAP = "\"'`*_$“”‘’"
_MARKER = re.compile(r"(?:answer[\s*_]*(?:is\b|:)|####)[\s*_:]*", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value)
    return str(value)


def _clean(text: str) -> str:
    """Strip wrappers, a leading "The answer is" and trailing punctuation; keep case."""
    t = " ".join(text.split()).strip(_WRAP).strip()
    for _ in range(2):  # "Answer: The answer is 42" happens
        t = _PREFIX.sub("", t).strip().strip(_WRAP).strip()
    return t.rstrip(".!;").strip().strip(_WRAP).strip()


def _key(text: str) -> str:
    return _clean(text).lower()


def _last_boxed(text: str) -> str | None:
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    i = start = starts[-1].end()
    depth = 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
        i += 1
    return text[start:]  # unclosed: take the rest


def final_answer(text: str) -> tuple[str, bool]:
    """The final answer in a model's text (cleaned, case kept) and whether an explicit marker
    (``\\boxed``, "answer is", "####") gave it rather than the last line."""
    t = text[-MAX_ANSWER_CHARS:]
    boxed = _last_boxed(t)
    if boxed is not None:
        return _clean(boxed[:MAX_FINAL_CHARS]), True
    marker = None
    for marker in _MARKER.finditer(t):  # noqa: B007 (the last one)
        continue
    if marker is not None:
        rest = t[marker.end() :].lstrip()
        line = rest.split("\n", 1)[0]
        if _clean(line):
            return _clean(line[:MAX_FINAL_CHARS]), True
    lines = [line for line in t.splitlines() if _clean(line)]
    return (_clean(lines[-1][:MAX_FINAL_CHARS]) if lines else ""), False


# --- the verifiers -------------------------------------------------------------------------


def _exact(answer: str, reference: str, question: str | None = None) -> bool:
    gold = _key(reference[:MAX_ANSWER_CHARS])
    if not gold:
        return False
    return _key(final_answer(answer)[0]) == gold or _key(answer[:MAX_ANSWER_CHARS]) == gold


_NEGATION = re.compile(r"\b(?:not|no|never|neither|nor|none|nothing|cannot)\b|n['’]t\b", re.I)
_HEDGES = frozenset({"or", "either", "maybe", "perhaps", "possibly", "probably", "might", "/"})
_JOINERS = frozenset({",", ";", "and", "or", "nor", "/", "&", "+", "-", "–", "—", "("})
_LINKS = frozenset({"is", "are", "was", "were", "be", "as", "equals", "means", ":", "="})
_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _tokens(text: str) -> list[str]:
    """Words (accents folded, case folded; "it's" is one word) and punctuation marks, without
    quotes and markdown emphasis, without the punctuation that ends the text."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    out = [t for t in _TOKEN.findall(folded) if t not in _WRAP]
    while out and not out[-1][0].isalnum():
        out.pop()
    return out


def _short(answer: str, reference: str, question: str | None = None) -> bool:
    if _exact(answer, reference):
        return True
    gold = _tokens(_clean(reference[:MAX_FINAL_CHARS]))
    text = answer[:MAX_ANSWER_CHARS].strip()
    if not gold or not text or len(text.split()) > MAX_SHORT_WORDS or _NEGATION.search(text):
        return False
    end = _SENTENCE_END.search(text)
    words = _tokens(text[: end.start()] if end else text)
    if question is not None:  # "Paris is the capital of France."
        asked = [w for w in _tokens(question[:MAX_ANSWER_CHARS]) if w[0].isalnum()]
        if restates(words, gold, asked):
            return True
    if words[-len(gold) :] != gold:
        return False
    before = words[: -len(gold)]
    if not before:  # "Paris. It has the Eiffel Tower."
        return True
    if before[-1] in _JOINERS or any(w in _HEDGES for w in before):
        return False
    return any(w in _LINKS or w.endswith(("'s", "’s")) for w in before)


_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d)\s*(%?)|[-+]?\.\d+\s*(%?)"
)


def _numbers(text: str) -> list[tuple[float, bool]]:
    out = []
    for m in _NUMBER.finditer(text.replace("−", "-")):
        raw = m.group(0).rstrip("% \t\n").replace(",", "")
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            out.append((value, bool(m.group(1) or m.group(2))))
    return out


_OPERATOR_BEFORE = re.compile(
    r"(?:[-+*/×÷^]|(?<![a-z])x|\b(?:plus|minus|times|multiplied by|divided by|over|add|subtract))$",
    re.I,
)


def _is_operand(text: str) -> bool:
    """Whether the last number of ``text`` is the right operand of an unfinished expression
    ("4 minus 2", "12 - 5", "12-5", "3x4"): an echoed question, not a result ("4 - 2 = 2")."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return False
    last = matches[-1]
    before = text[: last.start()].rstrip()
    if last.group(0)[0] in "+-" and before[-1:].isdigit():  # "12-5": a minus, not a sign
        return True
    return bool(_OPERATOR_BEFORE.search(before))


def _last_number(
    text: str, answer: bool = False, question: str | None = None
) -> tuple[float, bool] | None:
    final, explicit = final_answer(text)
    where = final
    found = _numbers(final)
    if not found and not explicit:  # "42 apples\n\nHope this helps!"
        where = text[-MAX_ANSWER_CHARS:]
        found = _numbers(where)
    if answer and found and _is_operand(where.replace("−", "-")):
        return None
    if found and question is not None:  # "There are 7000 grams in 7 kilograms."
        new = _new_number(where, question)
        if new is not None:
            return new, False
    return found[-1] if found else None


_EXPRESSION = re.compile(
    r"\d\s*(?:\*\*|[-+*/×÷^–—−]|x|\b(?:plus|minus|times|multiplied by|divided by|over)\b)"
    r"\s*[-+(]?\s*\.?\d",
    re.I,
)
"""Two numbers joined by an operator ("20–11", "7**2", "3 times 4"): numbers in an
expression are operands, not an answer to pick from."""


def _new_number(where: str, question: str) -> float | None:
    """The one number of the last sentence with numbers that the question does not state, when
    that sentence's last number is one it states (:func:`avocado_llm.data.echoes.new_value`);
    ``None`` when that rule does not apply (or the sentence negates, hedges or computes)."""
    sentences = [s for s in _SENTENCE_END.split(where) if _numbers(s)]
    if not sentences:
        return None
    sentence = sentences[-1]
    if _NEGATION.search(sentence) or _HEDGES & set(_tokens(sentence)):
        return None
    if _EXPRESSION.search(sentence):
        return None
    asked = question[:MAX_ANSWER_CHARS]
    stated = [v for v, _ in _numbers(asked)] + word_values(asked)
    return new_value([v for v, _ in _numbers(sentence)], stated)


def _readings(number: tuple[float, bool]) -> list[float]:
    value, percent = number
    return [value, value / 100] if percent else [value]


def _number(answer: str, reference: str, question: str | None = None) -> bool:
    gold, got = _last_number(reference), _last_number(answer, answer=True, question=question)
    if gold is None or got is None:
        return False
    return any(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
        for a in _readings(got)
        for b in _readings(gold)
    )


def _items(text: str) -> list[str]:
    t = re.sub(r"[\[\](){}]", " ", text.lower())
    t = re.sub(r"\band\b", " ", t)
    return [x.strip(_WRAP + ".") for x in re.split(r"[\s,;]+", t) if x.strip(_WRAP + ".")]


def _sequence(answer: str, reference: str, question: str | None = None) -> bool:
    gold = _items(_clean(reference[:MAX_ANSWER_CHARS]))  # not cut: a cut list must not match
    if not gold:
        return False
    final = final_answer(answer)[0]
    if _items(final) == gold:
        return True
    return ":" in final and _items(final.rsplit(":", 1)[1]) == gold  # "The sorted list: 2, 4"


_CHOICE = (
    re.compile(r"^(?:option|choice|letter)\s+\(?([A-Za-z])\)?(?:$|[\s.):,])", re.IGNORECASE),
    re.compile(r"^[(\[]([A-Za-z])[)\]](?:\s*(.*))?$", re.DOTALL),  # "(B)", "(b) Paris"
    re.compile(r"^([A-Z])(?:$|[.):]\s*(.*)$)", re.DOTALL),  # "B", "B.", "B) Paris", "B: Paris"
    re.compile(r"^([a-z])(?:$|[.)]\s*(.*)$)", re.DOTALL),  # "b", "b) Paris" (not "a dog")
)


def _choice_of(text: str) -> tuple[str | None, str]:
    """The option letter (upper case) and the option text after it, if any."""
    t = _clean(text)
    for pattern in _CHOICE:
        m = pattern.match(t)
        if m:
            rest = m.group(2) if m.lastindex and m.lastindex >= 2 else None
            return m.group(1).upper(), _key(rest or "")
    return None, _key(t)


_CHOICE_IN = re.compile(
    r"\b(?:option|choice|letter)\s+(?:is\s+)?(?:[(\[]([A-Za-z])[)\]]|([A-Z]))(?=$|[\s.,;:!)])",
    re.IGNORECASE,
)
_PAREN_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")


def _letter_in(sentence: str) -> str | None:
    """The one letter a sentence names ("the correct option is (B)", "I'd go with (B)");
    ``None`` when it names none or several ("(A) or (C)", "option (B), no, (C)")."""
    named = {(m.group(1) or m.group(2)).upper() for m in _CHOICE_IN.finditer(sentence)}
    named |= {m.group(1) for m in _PAREN_LETTER.finditer(sentence)}
    return named.pop() if len(named) == 1 else None


def _choice(answer: str, reference: str, question: str | None = None) -> bool:
    gold_letter, gold_text = _choice_of(reference[:MAX_FINAL_CHARS])
    final = final_answer(answer)[0]
    letter, text = _choice_of(final)
    if letter is None:
        letter = _letter_in(final)
    if letter is None:  # "B\n\nBecause ...": the first line gives the letter
        first = next((line for line in answer[:MAX_FINAL_CHARS].splitlines() if line.strip()), "")
        letter, _ = _choice_of(first)
    if letter is not None and gold_letter is not None:
        return letter == gold_letter
    return bool(gold_text) and (text or _key(final)) == gold_text


def _regex_check(pattern: re.Pattern[str]) -> Check:
    def check(answer: str, reference: str, question: str | None = None) -> bool:
        final = final_answer(answer)[0]
        if pattern.fullmatch(final):
            return True
        whole = answer.strip()
        return len(whole) <= MAX_REGEX_WHOLE_CHARS and pattern.fullmatch(whole) is not None

    return check


_CHECKS: dict[str, Check] = {
    "exact": _exact,
    "short": _short,
    "number": _number,
    "sequence": _sequence,
    "choice": _choice,
    "math": math_check,
}
