"""Tiny-world task families: determinism, disjoint splits, correct golds, fair verifiers.

Golds are recomputed from the prompt text alone (each prompt is parsed back against the
family's templates), so these tests do not trust the generators' own bookkeeping.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from avocado_llm.world import tasks
from avocado_llm.world.lore import COUNTRIES
from avocado_llm.world.tasks import (
    FAMILIES,
    Example,
    generate,
    get_family,
    normalize,
    verify_exact,
    verify_number,
    verify_sequence,
)

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


def _signature(examples) -> list[tuple]:
    return [(e.id, e.family, e.split, e.messages, e.answer) for e in examples]


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_examples(name, split):
    fam = get_family(name)
    a = fam.generate(split, 200, seed=5)
    b = fam.generate(split, 200, seed=5)
    assert _signature(a) == _signature(b)
    assert len(a) == 200


@pytest.mark.parametrize("name", ALL)
def test_different_seed_different_order(name):
    fam = get_family(name)
    a = [e.id for e in fam.generate("heldout", 100, seed=0)]
    b = [e.id for e in fam.generate("heldout", 100, seed=1)]
    assert a != b


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("name", BIG)
def test_different_seed_different_content(name, split):
    fam = get_family(name)
    a = {e.prompt for e in fam.generate(split, 100, seed=0)}
    b = {e.prompt for e in fam.generate(split, 100, seed=1)}
    assert a != b
    assert len(a & b) < 50, "two seeds should not mostly draw the same questions"


@pytest.mark.parametrize("name", ALL)
def test_fewer_examples_are_a_prefix_of_more(name):
    fam = get_family(name)
    assert _signature(fam.generate("train", 40, seed=3)) == _signature(
        fam.generate("train", 120, seed=3)[:40]
    )


@pytest.mark.parametrize("name", ALL)
def test_zero_examples(name):
    assert get_family(name).generate("train", 0) == []


def test_deterministic_across_processes():
    """No dependence on PYTHONHASHSEED or process state: a fresh interpreter agrees."""
    code = (
        "import json; from avocado_llm.world.tasks import FAMILIES\n"
        "print(json.dumps({n: [[e.id, e.prompt, e.answer] for e in f.generate('heldout', 20, 4)]"
        " for n, f in sorted(FAMILIES.items())}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    theirs = json.loads(out.stdout)
    ours = {
        n: [[e.id, e.prompt, e.answer] for e in get_family(n).generate("heldout", 20, 4)]
        for n in ALL
    }
    assert theirs == ours


# --- splits -------------------------------------------------------------------------------


@pytest.mark.parametrize(("train_seed", "heldout_seed"), [(0, 0), (0, 1), (1, 0), (2, 7)])
@pytest.mark.parametrize("name", ALL)
def test_splits_are_disjoint(name, train_seed, heldout_seed):
    train = gen(name, "train", N_TRAIN, train_seed)
    heldout = gen(name, "heldout", N_HELDOUT, heldout_seed)
    assert {e.split for e in train} == {"train"}
    assert {e.split for e in heldout} == {"heldout"}
    assert not {e.id for e in train} & {e.id for e in heldout}
    assert not {instance_of(name, e.prompt) for e in train} & {
        instance_of(name, e.prompt) for e in heldout
    }
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}


@pytest.mark.parametrize("name", ALL)
def test_ids_name_instances_one_to_one(name):
    """Within and across seeds and splits, an id stands for exactly one instance."""
    id_to_inst: dict[str, tuple] = {}
    inst_to_id: dict[tuple, str] = {}
    for split, n in (("train", N_TRAIN), ("heldout", N_HELDOUT)):
        for seed in (0, 1):
            examples = gen(name, split, n, seed)
            assert len({e.id for e in examples}) == len(examples), "duplicate example in a split"
            for e in examples:
                assert e.family == name
                assert e.id.startswith(f"{name}-")
                inst = instance_of(name, e.prompt)
                assert id_to_inst.setdefault(e.id, inst) == inst
                assert inst_to_id.setdefault(inst, e.id) == e.id
                if name != "facts":  # a fact's phrasing is part of its instance
                    assert len(e.messages) == 1


@pytest.mark.parametrize("name", ALL)
def test_split_sizes(name):
    heldout = gen(name, "heldout", N_HELDOUT, 0)
    assert len(heldout) == N_HELDOUT
    assert len({instance_of(name, e.prompt) for e in heldout}) == N_HELDOUT
    train = gen(name, "train", N_TRAIN, 0)
    assert len({instance_of(name, e.prompt) for e in train}) == len(train)
    assert len(train) >= MIN_TRAIN.get(name, MIN_TRAIN_SMALL)
    assert len(train) > len(heldout)


def test_unknown_split_raises_value_error():
    with pytest.raises(ValueError, match="split"):
        get_family("arithmetic").generate("test", 10)
    with pytest.raises(ValueError, match="split"):
        generate(["arithmetic"], "test", 10)


def test_unknown_family_raises_key_error_naming_the_known_ones():
    with pytest.raises(KeyError) as info:
        get_family("calculus")
    message = info.value.args[0]
    assert "calculus" in message
    for name in ALL:
        assert name in message
    with pytest.raises(KeyError):
        generate(["arithmetic", "calculus"], "train", 3)


def test_generate_concatenates_families_in_order():
    out = generate(["sorting", "facts"], "heldout", 7, seed=2)
    assert [e.family for e in out] == ["sorting"] * 7 + ["facts"] * 7
    assert _signature(out[:7]) == _signature(gen("sorting", "heldout", 7, 2))
    assert _signature(out[7:]) == _signature(gen("facts", "heldout", 7, 2))


# --- prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_prompts_are_user_chat_messages(name):
    for e in gen(name, "train", N_TRAIN, 0) + gen(name, "heldout", N_HELDOUT, 0):
        assert isinstance(e.messages, list) and len(e.messages) == 1
        (msg,) = e.messages
        assert msg == {"role": "user", "content": msg["content"]}
        assert isinstance(msg["content"], str) and msg["content"] == msg["content"].strip()
        assert "{" not in msg["content"] and "}" not in msg["content"], "unfilled slot"
        assert e.prompt == msg["content"]
        assert isinstance(e.answer, str) and e.answer and e.answer == e.answer.strip()


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("name", ALL)
def test_phrasing_is_varied(name, split):
    templates = get_family(name).templates
    assert len(templates) >= 5
    assert len(set(templates)) == len(templates)
    examples = gen(name, split, N_TRAIN if split == "train" else N_HELDOUT, 0)
    used = {parse(name, e.prompt)[0] for e in examples}
    assert used == set(range(len(templates))), "every phrasing should occur"
    # ... and no single phrasing dominates.
    counts = [sum(parse(name, e.prompt)[0] == t for e in examples) for t in used]
    assert max(counts) < 0.5 * len(examples)


# --- gold answers -------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("name", ALL)
def test_gold_answers_are_right(name, split):
    examples = gen(name, split, N_TRAIN if split == "train" else N_HELDOUT, 0)
    wrong = [(e.prompt, e.answer) for e in examples if e.answer != expected_answer(name, e.prompt)]
    assert not wrong, wrong[:5]


def test_lore_is_unambiguous():
    assert len(COUNTRIES) == 50
    names = [n for country, capital, ruler in COUNTRIES for n in (country, capital, ruler)]
    assert len(set(names)) == len(names)
    for country, capital, ruler in COUNTRIES:
        assert country.isalpha() and capital.isalpha()
        title, person = ruler.split(" ")
        assert title in {"King", "Queen", "Duke", "Prince"} and person.isalpha()


def test_facts_cover_the_lore_and_heldout_asks_known_facts_in_new_words():
    train = gen("facts", "train", 10_000, 0)  # everything there is
    heldout = gen("facts", "heldout", 10_000, 0)
    assert len(train) + len(heldout) == len(COUNTRIES) * 2 * N_CAPITAL_PHRASINGS
    for e in train + heldout:
        country, relation, _ = instance_of("facts", e.prompt)
        assert e.answer == LORE[country][relation]
    facts_in = {
        split: {instance_of("facts", e.prompt)[:2] for e in examples}
        for split, examples in (("train", train), ("heldout", heldout))
    }
    assert facts_in["train"] | facts_in["heldout"] == {
        (c, r) for c in LORE for r in ("capital", "ruler")
    }
    # The held-out split rephrases facts the train split teaches.
    assert facts_in["heldout"] <= facts_in["train"]


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
