"""Shared by the tiny-world tests: the families by kind, cached example draws, and prompts parsed
back into their instance (golds recomputed from the prompt text alone)."""

from __future__ import annotations

import functools
import re

from avocado_llm.world.lore import COUNTRIES
from avocado_llm.world.tasks import FAMILIES, Example, get_family

ALL = sorted(FAMILIES)
BIG = ["arithmetic", "reverse", "counting", "sorting", "units"]
"""Families whose instance space is far larger than what one call draws."""
NUMBER_FAMILIES = ["arithmetic", "counting", "units"]
SEQUENCE_FAMILIES = ["reverse", "sorting"]

N_TRAIN, N_HELDOUT = 3000, 300
MIN_TRAIN = {"arithmetic": 3000, "reverse": 3000, "counting": 3000, "sorting": 3000}
MIN_TRAIN_SMALL = 400
"""Facts (50 countries x 2 relations x 8 phrasings) and units (6 x 199) are finite."""


@functools.cache
def gen(name: str, split: str, n: int, seed: int = 0) -> tuple[Example, ...]:
    return tuple(get_family(name).generate(split, n, seed))


# --- parsing prompts back into their instance ------------------------------------------------

_SLOT = {
    "a": r"\d+",
    "b": r"\d+",
    "n": r"\d+",
    "words": r"[a-z]+(?: [a-z]+)*",
    "items": r"[a-z]+(?: [a-z]+)*",
    "numbers": r"\d(?: \d)*",
    "item": r"[a-z]+",
    "src": r"[a-z]+",
    "dst": r"[a-z]+",
    "country": r"[A-Z][a-z]+",
}


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(
        re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOT[p]})" for i, p in enumerate(parts)
    )
    return re.compile(rx)


@functools.cache
def _regexes(name: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_template_regex(t) for t in get_family(name).templates)


def parse(name: str, prompt: str) -> tuple[int, dict[str, str]]:
    """(template index, slots) of a prompt; exactly one template must match it."""
    hits = [
        (i, m.groupdict()) for i, rx in enumerate(_regexes(name)) if (m := rx.fullmatch(prompt))
    ]
    assert len(hits) == 1, f"{name}: {prompt!r} matches {len(hits)} templates"
    return hits[0]


# Written out independently of tasks.UNITS: (from, to) -> factor.
FACTORS = {
    ("kilometers", "meters"): 1000,
    ("meters", "centimeters"): 100,
    ("centimeters", "millimeters"): 10,
    ("kilograms", "grams"): 1000,
    ("liters", "milliliters"): 1000,
    ("minutes", "seconds"): 60,
}
LORE = {country: {"capital": capital, "ruler": ruler} for country, capital, ruler in COUNTRIES}
N_CAPITAL_PHRASINGS = 8


def fact_relation(template_index: int, prompt: str) -> str:
    relation = "capital" if template_index < N_CAPITAL_PHRASINGS else "ruler"
    # The wording must agree with the relation the template index implies.
    words = ("capital", "governed") if relation == "capital" else ("rule", "throne")
    assert any(w in prompt.lower() for w in words), prompt
    return relation


def instance_of(name: str, prompt: str) -> tuple:
    """A canonical identity of the question's content, recovered from the prompt."""
    t, s = parse(name, prompt)
    if name == "arithmetic":  # a + b and b + a are one instance
        return tuple(sorted((int(s["a"]), int(s["b"]))))
    if name in ("reverse", "sorting"):
        return (s.get("words") or s["numbers"],)
    if name == "counting":
        return (s["item"], s["items"])
    if name == "units":
        return (int(s["n"]), s["src"], s["dst"])
    if name == "facts":
        return (s["country"], fact_relation(t, prompt), t)
    raise AssertionError(name)


def expected_answer(name: str, prompt: str) -> str:
    """The gold answer, recomputed from the prompt alone."""
    t, s = parse(name, prompt)
    if name == "arithmetic":
        a, b = int(s["a"]), int(s["b"])
        assert 0 <= a < 100 and 0 <= b < 100
        return str(a + b)
    if name == "reverse":
        words = s["words"].split()
        assert 3 <= len(words) <= 5
        return " ".join(words[::-1])
    if name == "counting":
        items = s["items"].split()
        assert 3 <= len(items) <= 8
        return str(sum(1 for x in items if x == s["item"]))
    if name == "sorting":
        digits = [int(x) for x in s["numbers"].split()]
        assert 3 <= len(digits) <= 5
        return " ".join(str(d) for d in sorted(digits))
    if name == "units":
        n = int(s["n"])
        assert 1 <= n <= 199
        return str(n * FACTORS[(s["src"], s["dst"])])
    if name == "facts":
        return LORE[s["country"]][fact_relation(t, prompt)]
    raise AssertionError(name)
