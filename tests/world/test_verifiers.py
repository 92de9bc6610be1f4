"""Tiny-world verifiers: every accepted format of the gold passes, every wrong answer fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from world_helpers import (
    ALL,
    BIG,
    LORE,
    N_HELDOUT,
    N_TRAIN,
    NUMBER_FAMILIES,
    SEQUENCE_FAMILIES,
    gen,
    instance_of,
)

from avocado_llm.world import tasks
from avocado_llm.world.tasks import (
    Example,
    get_family,
    normalize,
    verify_exact,
    verify_number,
    verify_sequence,
)

# --- verifiers: accepting the gold --------------------------------------------------------

ACCEPT: dict[str, Callable[[str], str]] = {
    "exact": lambda g: g,
    "whitespace": lambda g: f"  {g} \n",
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "period": lambda g: f"{g}.",
    "answer_is": lambda g: f"The answer is {g}",
    "answer_is_period": lambda g: f"The answer is {g}.",
    "answer_is_colon": lambda g: f"The answer is: {g}",
    "answer_colon": lambda g: f"Answer: {g}",
    "answer_colon_period": lambda g: f"Answer: {g}.",
    "double_quotes": lambda g: f'"{g}"',
    "single_quotes": lambda g: f"'{g}'",
    "curly_quotes": lambda g: f"\u201c{g}\u201d",
    "quoted_answer_is": lambda g: f'The answer is "{g}".',
    "bold": lambda g: f"**{g}**",
    "exclamation": lambda g: f"{g}!",
}


def _sample(name: str, k: int = 25) -> list[Example]:
    return list(gen(name, "heldout", N_HELDOUT, 0)[:k]) + list(gen(name, "train", N_TRAIN, 0)[:k])


@pytest.mark.parametrize("fmt", ACCEPT)
@pytest.mark.parametrize("name", ALL)
def test_verifier_accepts_gold_formats(name, fmt):
    fam = get_family(name)
    rejected = [
        ACCEPT[fmt](e.answer)
        for e in _sample(name)
        if not fam.verify(ACCEPT[fmt](e.answer), e.answer)
    ]
    assert not rejected, rejected[:5]


NUMBER_ACCEPT: dict[str, Callable[[int], str]] = {
    "float": lambda g: f"{g}.0",
    "float_00": lambda g: f"{g}.00",
    "float_answer_is": lambda g: f"The answer is {g}.0.",
    "thousands": lambda g: f"{g:,}",
    "thousands_answer_is": lambda g: f"The answer is {g:,}.",
    "thousands_float": lambda g: f"{g:,}.0",
    "with_unit": lambda g: f"{g} units",
}


@pytest.mark.parametrize("fmt", NUMBER_ACCEPT)
@pytest.mark.parametrize("name", NUMBER_FAMILIES)
def test_number_verifier_accepts_number_formats(name, fmt):
    fam = get_family(name)
    examples = _sample(name)
    if name == "units":  # make sure thousands separators are exercised
        examples += [e for e in gen(name, "train", N_TRAIN, 0) if int(e.answer) >= 10_000][:25]
        assert any(int(e.answer) >= 1000 for e in examples)
    rejected = [
        NUMBER_ACCEPT[fmt](int(e.answer))
        for e in examples
        if not fam.verify(NUMBER_ACCEPT[fmt](int(e.answer)), e.answer)
    ]
    assert not rejected, rejected[:5]


SEQUENCE_ACCEPT: dict[str, Callable[[list[str]], str]] = {
    "comma_space": lambda xs: ", ".join(xs),
    "comma": lambda xs: ",".join(xs),
    "semicolons": lambda xs: "; ".join(xs),
    "and": lambda xs: ", ".join(xs[:-1]) + " and " + xs[-1],
    "oxford_and": lambda xs: ", ".join(xs[:-1]) + ", and " + xs[-1],
    "newlines": lambda xs: "\n".join(xs),
    "double_spaces": lambda xs: "  ".join(xs),
    "brackets": lambda xs: "[" + ", ".join(xs) + "]",
    "answer_is_commas": lambda xs: "The answer is " + ", ".join(xs) + ".",
    "answer_colon_commas": lambda xs: "Answer: " + ", ".join(xs),
}


@pytest.mark.parametrize("fmt", SEQUENCE_ACCEPT)
@pytest.mark.parametrize("name", SEQUENCE_FAMILIES)
def test_sequence_verifier_accepts_list_formats(name, fmt):
    fam = get_family(name)
    rejected = [
        SEQUENCE_ACCEPT[fmt](e.answer.split())
        for e in _sample(name)
        if not fam.verify(SEQUENCE_ACCEPT[fmt](e.answer.split()), e.answer)
    ]
    assert not rejected, rejected[:5]


@pytest.mark.parametrize(
    ("verifier", "response", "gold"),
    [
        (verify_number, "1,000", "1000"),
        (verify_number, "1,000.", "1000"),
        (verify_number, "The answer is 12,000.", "12000"),
        (verify_number, "199,000 grams", "199000"),
        (verify_number, "42.0", "42"),
        (verify_number, "The answer is 42", "42"),
        (verify_number, "Answer: 42", "42"),
        (verify_number, '"42"', "42"),
        (verify_number, "= 42", "42"),
        (verify_number, "It is 42.", "42"),
        (verify_number, "0", "0"),
        (verify_number, "3 times", "3"),
        (verify_sequence, "1, 2, 3", "1 2 3"),
        (verify_sequence, "1 2 3", "1 2 3"),
        (verify_sequence, "The answer is 1, 2, 3.", "1 2 3"),
        (verify_sequence, "Moon, Cat, Dog", "moon cat dog"),
        (verify_exact, "ostrel", "Ostrel"),
        (verify_exact, "  Ostrel. ", "Ostrel"),
        (verify_exact, "The answer is King Bazou.", "King Bazou"),
        (verify_exact, "Answer: The answer is Ostrel", "Ostrel"),
    ],
)
def test_verifier_accepts(verifier, response, gold):
    assert verifier(response, gold)


# --- verifiers: rejecting wrong answers ---------------------------------------------------

NUMBER_REJECT: dict[str, Callable[[int], str]] = {
    "plus_one": lambda g: str(g + 1),
    "minus_one": lambda g: str(g - 1),
    "times_ten": lambda g: str(g * 10 + 1),
    "negated": lambda g: str(-g - 1),
    "fraction": lambda g: f"{g}.5",
    "off_by_one_float": lambda g: f"{g + 1}.0",
    "off_by_one_sentence": lambda g: f"The answer is {g + 1}.",
    "candidates_gold_last": lambda g: f"{g - 1} or {g}",
    "candidates_gold_first": lambda g: f"{g} or {g + 1}",
    "two_numbers": lambda g: f"{g} {g + 1}",
    "list": lambda g: f"{g}, {g + 1}",
    "not_gold_but": lambda g: f"not {g} but {g + 1}",
    "wrong_not_gold": lambda g: f"{g + 1}, not {g}",
    "gold_then_hedge": lambda g: f"{g} or",
    "range": lambda g: f"{g}-{g + 1}",
    "digits_doubled": lambda g: f"{g}{g}" if g else "1",
    "words": lambda g: "I don't know",
    "empty": lambda g: "",
    "blank": lambda g: "  \n ",
    "period_only": lambda g: ".",
}


@pytest.mark.parametrize("fmt", NUMBER_REJECT)
@pytest.mark.parametrize("name", NUMBER_FAMILIES)
def test_number_verifier_rejects_wrong_answers(name, fmt):
    fam = get_family(name)
    accepted = [
        NUMBER_REJECT[fmt](int(e.answer))
        for e in _sample(name)
        if fam.verify(NUMBER_REJECT[fmt](int(e.answer)), e.answer)
    ]
    assert not accepted, accepted[:5]


def _reversed(xs):
    return xs[::-1]


def _swap_first_distinct(xs):
    for i in range(len(xs) - 1):
        if xs[i] != xs[i + 1]:
            return [*xs[:i], xs[i + 1], xs[i], *xs[i + 2 :]]
    return None


SEQUENCE_REJECT: dict[str, Callable[[list[str]], str | None]] = {
    "reversed": lambda xs: " ".join(_reversed(xs)),
    "swapped": lambda xs: (s := _swap_first_distinct(xs)) and " ".join(s),
    "missing_last": lambda xs: " ".join(xs[:-1]),
    "missing_first": lambda xs: ", ".join(xs[1:]),
    "extra_item": lambda xs: " ".join([*xs, xs[0]]),
    "duplicated": lambda xs: " ".join(xs + xs),
    "candidates": lambda xs: " ".join(xs) + " or " + " ".join(_reversed(xs)),
    "not_gold_but": lambda xs: "not " + " ".join(xs) + " but " + " ".join(_reversed(xs)),
    "first_item_only": lambda xs: xs[0],
    "empty": lambda xs: "",
    "blank": lambda xs: "   ",
    "punctuation_only": lambda xs: ", ,",
}


@pytest.mark.parametrize("fmt", SEQUENCE_REJECT)
@pytest.mark.parametrize("name", SEQUENCE_FAMILIES)
def test_sequence_verifier_rejects_wrong_answers(name, fmt):
    fam = get_family(name)
    accepted, tried = [], 0
    for e in _sample(name):
        gold = e.answer.split()
        wrong = SEQUENCE_REJECT[fmt](gold)
        if wrong is None or (wrong.split() == gold):  # e.g. reversing "3 3 3"
            continue
        tried += 1
        if fam.verify(wrong, e.answer):
            accepted.append(wrong)
    assert tried >= 10
    assert not accepted, accepted[:5]


FACT_REJECT: dict[str, Callable[[str, str], str]] = {
    "other": lambda g, o: o,
    "other_sentence": lambda g, o: f"The answer is {o}.",
    "candidates": lambda g, o: f"{g} or {o}",
    "candidates_gold_last": lambda g, o: f"{o} or {g}",
    "not_gold_but": lambda g, o: f"not {g} but {o}",
    "both": lambda g, o: f"{g}, {o}",
    "misspelt": lambda g, o: g + "a",
    "truncated": lambda g, o: g[:-1],
    "empty": lambda g, o: "",
    "blank": lambda g, o: " ",
}


@pytest.mark.parametrize("fmt", FACT_REJECT)
def test_facts_verifier_rejects_wrong_answers(fmt):
    fam = get_family("facts")
    accepted = []
    for e in _sample("facts"):
        country, relation, _ = instance_of("facts", e.prompt)
        # The same country's other fact, and the same fact of another country.
        others = [
            LORE[country]["ruler" if relation == "capital" else "capital"],
            next(v[relation] for c, v in LORE.items() if c != country),
            country,
        ]
        for other in others:
            wrong = FACT_REJECT[fmt](e.answer, other)
            if fam.verify(wrong, e.answer):
                accepted.append(wrong)
    assert not accepted, accepted[:5]


@pytest.mark.parametrize(
    ("verifier", "response", "gold"),
    [
        (verify_number, "43", "42"),
        (verify_number, "41", "42"),
        (verify_number, "41 or 42", "42"),
        (verify_number, "42 or 43", "42"),
        (verify_number, "not 42 but 43", "42"),
        (verify_number, "42 or", "42"),
        (verify_number, "4,2", "42"),
        (verify_number, "43,00", "4300"),
        (verify_number, "1,00", "100"),
        (verify_number, "-42", "42"),
        (verify_number, "", "42"),
        (verify_number, "", "0"),
        (verify_number, ",", "0"),
        (verify_number, "about 42", "42"),
        (verify_sequence, "3, 2, 1", "1 2 3"),
        (verify_sequence, "1, 2", "1 2 3"),
        (verify_sequence, "1 2 3 or 3 2 1", "1 2 3"),
        (verify_sequence, "", "1 2 3"),
        (verify_sequence, ",", "1 2 3"),
        (verify_exact, "", "Ostrel"),
        (verify_exact, "Ostrel or Bazou", "Ostrel"),
        (verify_exact, "The capital is not Ostrel", "Ostrel"),
        (verify_exact, "Bazou", "King Bazou"),
    ],
)
def test_verifier_rejects(verifier, response, gold):
    assert not verifier(response, gold)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", "42"),
        ("  The Answer is 42. ", "42"),
        ("Answer: The answer is 42", "42"),
        ('"Ostrel"', "ostrel"),
        ("King   Bazou", "king bazou"),
        ("Final answer: 7!", "7"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_family_groups_cover_every_family():
    assert sorted(NUMBER_FAMILIES + SEQUENCE_FAMILIES + ["facts"]) == ALL
    assert set(BIG) < set(ALL)


@pytest.mark.parametrize("key", ["0+0", "37+45", "Velora|capital|3", ""])
def test_split_of_respects_the_extreme_fractions(key):
    assert tasks.split_of(key, 0.0) == "train"
    assert tasks.split_of(key, 1.0) == "heldout"
    assert tasks.split_of(key, 0.3) == tasks.split_of(key, 0.3)
