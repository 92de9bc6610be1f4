"""Verifiable task families of the tiny world.

Each family generates chat prompts with a short gold answer and verifies free-form answers.
An *instance* is the content of a question (``37+45``; ``Velora|capital|phrasing 3``); its split
is a pure function of that key (a hash), so the train and held-out splits can never share an
instance, whatever the seed or the number of examples asked for. The phrasing of a question is
drawn from several templates, so prompts read like a user's.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from avocado_llm.world.lore import COUNTRIES

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")


@dataclass(frozen=True)
class Example:
    """One prompt of a family, with its gold answer."""

    id: str
    """Stable id: ``<family>-<hash of the instance key>``."""
    family: str
    split: Split
    messages: list[dict[str, str]] = field(hash=False)
    """Chat messages, as a user would send them (``[{"role": "user", "content": ...}]``)."""
    answer: str
    """The short gold answer (``"82"``, ``"Ostrel"``, ``"2 4 7"``)."""

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def split_of(key: str, heldout_fraction: float) -> Split:
    """The split an instance belongs to: a hash of its key, independent of any seed."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return "heldout" if (h % 10_000) < heldout_fraction * 10_000 else "train"


# --- answer normalisation, shared by every verifier ----------------------------------------

_PREFIX = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)\s*|it\s+is\s+|it's\s+|result\s*:\s*|=\s*)",
    re.IGNORECASE,
)
_WRAP = "\"'`*“”‘’"


def normalize(text: str) -> str:
    """Lower-case, strip a leading "The answer is" and trailing punctuation, squeeze spaces."""
    t = " ".join(text.strip().split())
    t = t.strip(_WRAP).strip()
    for _ in range(2):  # "Answer: The answer is 42" happens
        t = _PREFIX.sub("", t).strip().strip(_WRAP).strip()
    t = t.rstrip(".!;").strip().strip(_WRAP).strip()
    return t.lower()


def _as_number(text: str) -> float | None:
    t = text.replace(",", "").replace(" ", "")
    try:
        return float(t)
    except ValueError:
        return None


def verify_exact(response: str, gold: str) -> bool:
    return normalize(response) == normalize(gold)


def verify_number(response: str, gold: str) -> bool:
    """Accepts "42", "42.0", "1,000", "The answer is 42." — and no other number."""
    r = normalize(response)
    # Allow a unit after the number ("7000 m") but nothing before it. Commas only as thousands
    # separators ("1,000", not "4,2"); a trailing "or"/"not" is a hedge, not a unit.
    m = re.fullmatch(
        r"(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?:\s+(?!(?:or|and|not|nor|but)$)[a-z]+)?", r
    )
    if not m:
        return False
    value, expected = _as_number(m.group(1)), _as_number(gold)
    return value is not None and expected is not None and value == expected


def verify_sequence(response: str, gold: str) -> bool:
    """Item lists: commas, spaces or "and" between items are all fine; order matters."""

    def items(t: str) -> list[str]:
        t = normalize(t).strip("[](){}").replace(" and ", " ")  # "[2, 4, 7]" is fine too
        return [x for x in re.split(r"[\s,;]+", t) if x]

    return bool(items(response)) and items(response) == items(gold)


# --- families ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    key: str
    slots: dict[str, object]
    answer: str


@dataclass(frozen=True)
class TaskFamily:
    """A generator of instances, the phrasings of its questions, and a verifier."""

    name: str
    description: str
    templates: tuple[str, ...]
    sample: Callable[[random.Random], Instance]
    """Draws one instance uniformly-ish from the family's instance space."""
    verifier: Callable[[str, str], bool]
    heldout_fraction: float = 0.2
    enumerate_all: Callable[[], list[Instance]] | None = None
    """For small, finite families: every instance (sampling then draws without replacement)."""

    def verify(self, response: str, gold: str) -> bool:
        return self.verifier(response, gold)

    def generate(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """``n`` distinct examples of ``split`` (fewer only if the family has fewer)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        return list(self._iter(split, n, rng))

    def _iter(self, split: Split, n: int, rng: random.Random) -> Iterator[Example]:
        seen: set[str] = set()
        if self.enumerate_all is not None:
            pool = [
                i for i in self.enumerate_all() if split_of(i.key, self.heldout_fraction) == split
            ]
            rng.shuffle(pool)
            candidates: Iterator[Instance] = iter(pool)
        else:
            candidates = (self.sample(rng) for _ in range(max(1000, n * 50)))
        for inst in candidates:
            if len(seen) >= n:
                return
            if inst.key in seen or split_of(inst.key, self.heldout_fraction) != split:
                continue
            seen.add(inst.key)
            template = self.templates[
                int(inst.slots.get("template", rng.randrange(len(self.templates))))
            ]
            content = template.format(**inst.slots)
            digest = hashlib.blake2b(inst.key.encode(), digest_size=6).hexdigest()
            yield Example(
                id=f"{self.name}-{digest}",
                family=self.name,
                split=split,
                messages=[{"role": "user", "content": content}],
                answer=inst.answer,
            )


def _arithmetic(rng: random.Random) -> Instance:
    a, b = rng.randrange(100), rng.randrange(100)
    # The key is order-free: 3+4 and 4+3 are one instance, so they share a split.
    return Instance(f"{min(a, b)}+{max(a, b)}", {"a": a, "b": b}, str(a + b))


WORDS = ("cat", "dog", "fox", "owl", "bee", "cow", "elk", "ant",
         "red", "blue", "green", "gold", "pink", "gray", "sun", "moon")  # fmt: skip


def _reverse(rng: random.Random) -> Instance:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
    text = " ".join(words)
    return Instance(text, {"words": text}, " ".join(reversed(words)))


COUNTABLE = ("apple", "pear", "plum", "fig")


def _counting(rng: random.Random) -> Instance:
    items = [rng.choice(COUNTABLE) for _ in range(rng.randint(3, 8))]
    target = rng.choice(COUNTABLE)
    text = " ".join(items)
    return Instance(f"{target}|{text}", {"item": target, "items": text}, str(items.count(target)))


def _sorting(rng: random.Random) -> Instance:
    digits = [rng.randrange(10) for _ in range(rng.randint(3, 5))]
    text = " ".join(map(str, digits))
    return Instance(text, {"numbers": text}, " ".join(map(str, sorted(digits))))


# (from, to, factor, singular-from, plural-to)
UNITS = (
    ("km", "m", 1000, "kilometers", "meters"),
    ("m", "cm", 100, "meters", "centimeters"),
    ("cm", "mm", 10, "centimeters", "millimeters"),
    ("kg", "g", 1000, "kilograms", "grams"),
    ("l", "ml", 1000, "liters", "milliliters"),
    ("min", "s", 60, "minutes", "seconds"),
)


def _units(rng: random.Random) -> Instance:
    src, dst, factor, src_name, dst_name = rng.choice(UNITS)
    n = rng.randint(1, 199)
    return Instance(
        f"{n}{src}>{dst}",
        {"n": n, "src": src_name, "dst": dst_name},
        str(n * factor),
    )


FACT_TEMPLATES = {
    "capital": (
        "What is the capital of {country}?",
        "Name the capital city of {country}.",
        "Which city is the capital of {country}?",
        "{country} has its capital in which city?",
        "Tell me the capital of {country}.",
        "Capital of {country}?",
        "What city is {country} governed from?",
        "I need the capital of {country}.",
    ),
    "ruler": (
        "Who rules {country}?",
        "Name the ruler of {country}.",
        "Who is the ruler of {country}?",
        "{country} is ruled by whom?",
        "Tell me who rules {country}.",
        "Ruler of {country}?",
        "Who sits on the throne of {country}?",
        "I need the name of the ruler of {country}.",
    ),
}
_FACT_PHRASINGS = FACT_TEMPLATES["capital"] + FACT_TEMPLATES["ruler"]


def _all_facts() -> list[Instance]:
    """Every (country, relation, phrasing): the held-out split asks known facts in new words."""
    out = []
    for country, capital, ruler in COUNTRIES:
        for offset, (relation, answer) in enumerate((("capital", capital), ("ruler", ruler))):
            for t in range(len(FACT_TEMPLATES[relation])):
                template = offset * len(FACT_TEMPLATES["capital"]) + t
                slots = {"country": country, "template": template}
                out.append(Instance(f"{country}|{relation}|{t}", slots, answer))
    return out


FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        TaskFamily(
            name="arithmetic",
            description="Add two numbers below 100.",
            templates=(
                "What is {a} plus {b}?",
                "Compute {a} + {b}.",
                "Add {a} and {b}.",
                "What do you get when you add {b} to {a}?",
                "{a} + {b} = ?",
                "Please calculate the sum of {a} and {b}.",
            ),
            sample=_arithmetic,
            verifier=verify_number,
        ),
        TaskFamily(
            name="reverse",
            description="Reverse the order of 3-5 words.",
            templates=(
                "Reverse the order of these words: {words}",
                "Write these words backwards: {words}",
                "Say the words in reverse order: {words}",
                "Reverse: {words}",
                "Put these words in the opposite order: {words}",
            ),
            sample=_reverse,
            verifier=verify_sequence,
        ),
        TaskFamily(
            name="facts",
            description="Capitals and rulers of a fictional world (only memorisable).",
            templates=_FACT_PHRASINGS,
            sample=lambda rng: rng.choice(_all_facts()),
            verifier=verify_exact,
            heldout_fraction=0.4,
            enumerate_all=_all_facts,
        ),
        TaskFamily(
            name="counting",
            description="Count how often a word occurs in a list.",
            templates=(
                "How many times does {item} appear in: {items}?",
                "Count the word {item} in this list: {items}",
                "In the list {items}, how many are {item}?",
                "How often do you see {item} here: {items}",
                "Number of {item} in: {items}?",
            ),
            sample=_counting,
            verifier=verify_number,
        ),
        TaskFamily(
            name="sorting",
            description="Sort 3-5 digits in ascending order.",
            templates=(
                "Sort these numbers from smallest to largest: {numbers}",
                "Put in ascending order: {numbers}",
                "Order these from low to high: {numbers}",
                "Sort: {numbers}",
                "Arrange in increasing order: {numbers}",
            ),
            sample=_sorting,
            verifier=verify_sequence,
        ),
        TaskFamily(
            name="units",
            description="Convert between metric units (and minutes to seconds).",
            templates=(
                "Convert {n} {src} to {dst}.",
                "How many {dst} are in {n} {src}?",
                "{n} {src} is how many {dst}?",
                "Express {n} {src} in {dst}.",
                "What is {n} {src} in {dst}?",
            ),
            sample=_units,
            verifier=verify_number,
            heldout_fraction=0.3,
        ),
    )
}


def get_family(name: str) -> TaskFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown task family {name!r}; known families: {', '.join(FAMILIES)}"
        ) from None


def generate(families: list[str], split: Split, n_per_family: int, seed: int = 0) -> list[Example]:
    """Examples of several families, family by family."""
    return [ex for f in families for ex in get_family(f).generate(split, n_per_family, seed)]
