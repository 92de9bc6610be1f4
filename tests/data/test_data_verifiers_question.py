"""``short`` and ``number`` given the question (``data.verifiers`` with ``data.echoes``): real
chat models restate the question ("Paris is the capital of France.", "There are 7000 grams in 7
kilograms."); the question tells its words and numbers from the answer's. Both directions: the
restated right answer is accepted, and no wrong answer becomes right (rival candidates, hedges,
negations, a different entity, a swapped relation, an echo alone). Without a question, nothing
changes (tests/data/test_data_verifiers.py)."""

from __future__ import annotations

import pytest

from avocado_llm.data.echoes import new_value, question_of, restates, word_values
from avocado_llm.data.verifiers import VERSIONS, Verifier, verifier, versions


def score(spec: str, answer: str, reference: str, question: str | None) -> float:
    v = verifier(spec)
    assert isinstance(v, Verifier)
    return v(answer, reference, question)


CAPITAL = "What is the capital of France? Answer with the name only."
CAPITAL_OF = "Dhaka is the capital of which country? Answer with the name only."
OPPOSITE = "What is the opposite of 'hot'? Answer with one word."
GRAMS = "How many grams are in 7 kilograms?"


# --- short -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference", "question"),
    [
        ("Paris is the capital of France.", "Paris", CAPITAL),
        ("paris is the capital of france", "Paris", CAPITAL),
        ("**Paris** is the capital of France.", "Paris", CAPITAL),
        ("Paris is the capital of France. It is known for the Eiffel Tower.", "Paris", CAPITAL),
        ("The capital of France is Paris.", "Paris", CAPITAL),  # the plain rule, still
        ("Paris", "Paris", CAPITAL),
        ("Dhaka is the capital of Bangladesh.", "Bangladesh", CAPITAL_OF),  # kept
        ("Cold is the opposite of hot.", "cold", OPPOSITE),
        ("San José is the capital of Costa Rica.", "San Jose",
         "What is the capital of Costa Rica? Answer with the name only."),
        ("Asia is the continent of Iraq.", "Asia", "On which continent is Iraq?"),
        ("Iraq is in Asia.", "Asia", "On which continent is Iraq?"),  # the plain rule
    ],
)  # fmt: skip
def test_short_accepts_a_right_answer_that_restates_the_question(
    answer: str, reference: str, question: str
) -> None:
    assert score("short", answer, reference, question) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference", "question"),
    [
        ("Lyon is the capital of France.", "Paris", CAPITAL),  # a different entity
        ("Paris, not Lyon", "Paris", CAPITAL),  # a negation
        ("Paris is not the capital of France.", "Paris", CAPITAL),
        ("Paris or Lyon", "Paris", CAPITAL),  # a hedge: two candidates
        ("Paris or Lyon is the capital of France.", "Paris", CAPITAL),
        ("Maybe Paris is the capital of France.", "Paris", CAPITAL),
        ("Paris, Lyon", "Paris", CAPITAL),
        ("Paris and Lyon are the capital of France.", "Paris", CAPITAL),
        ("Lyon is the capital of France, Paris is nice.", "Paris", CAPITAL),
        ("Paris is the largest city of France.", "Paris", CAPITAL),  # words not asked
        ("Paris is the capital of France, Paris.", "Paris", CAPITAL),  # twice, a comma
        ("Bangladesh is the capital of Dhaka.", "Bangladesh", CAPITAL_OF),  # swapped
        ("The opposite of cold is hot.", "cold", OPPOSITE),  # the reference inside
        ("Hot is the opposite of warm.", "cold", OPPOSITE),
        ("lime green", "green", "What colour is a lime?"),  # closing, no linking word
        # the reference in the question: an echo of the question names it
        ("Vilnius is the capital of which country?", "Vilnius",
         "Vilnius is the capital of which country?"),
        ("hot cold", "cold", OPPOSITE),
        ("The capital of France", "Paris", CAPITAL),  # an echo alone
        ("Lyon is the capital of France. Paris is bigger.", "Paris", CAPITAL),
        # a question that offers candidates: its words may be the rival answer
        ("Lyon Paris", "Paris", "Which is the capital of France, Paris or Lyon?"),
        ("Paris Lyon", "Paris", "Which is the capital of France, Paris or Lyon?"),
        ("Paris is the capital of France. " + "It is lovely. " * 10, "Paris", CAPITAL),  # long
        ("Paris is the capital of France.", "", CAPITAL),
        ("", "Paris", CAPITAL),
    ],
)  # fmt: skip
def test_short_refuses_wrong_answers_however_they_echo_the_question(
    answer: str, reference: str, question: str
) -> None:
    assert score("short", answer, reference, question) == 0.0


def test_short_without_the_question_scores_as_before() -> None:
    assert score("short", "Paris is the capital of France.", "Paris", None) == 0.0
    assert score("short", "Cold is the opposite of hot.", "cold", None) == 0.0
    assert score("short", "Dhaka is the capital of Bangladesh.", "Bangladesh", None) == 1.0


def test_restates_reads_words_not_text() -> None:
    asked = ["what", "is", "the", "capital", "of", "france"]
    assert restates(["paris", "is", "the", "capital", "of", "france"], ["paris"], asked)
    assert restates(["paris", "is", "france's", "capital"], ["paris"], asked) is False  # order
    assert restates(["paris", "is", "the", "capital", "of", "france"], ["paris"], []) is False
    assert restates(["paris", ",", "the", "capital"], ["paris"], asked) is False


# --- number ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference", "question"),
    [
        ("There are 7000 grams in 7 kilograms.", "7000", GRAMS),
        ("There are 7,000 grams in 7 kilograms.", "7000", GRAMS),
        ("7 kilograms is 7000 grams.", "7000", GRAMS),  # the last number: as before
        ("There are 100 cents in 1 dollar.", "100", "How many cents are in one dollar?"),
        ("2 cats have 8 legs in total.", "8", "How many legs do 2 cats have?"),
        ("8 legs for 2 cats", "8", "How many legs do 2 cats have?"),
        ("There are 600 years in 6 centuries.", "600", "How many years are in six centuries?"),
        ("2 times 1 is 2", "2", "What is 2 times 1?"),  # an echo that is also the answer
    ],
)
def test_number_reads_past_the_questions_numbers(
    answer: str, reference: str, question: str
) -> None:
    assert score("number", answer, reference, question) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference", "question"),
    [
        ("There are 7 grams in 7 kilograms.", "7000", GRAMS),  # an echo alone
        ("7 kilograms", "7000", GRAMS),
        ("There are 700 grams in 7 kilograms.", "7000", GRAMS),
        ("7000 or 700 grams in 7 kilograms", "7000", GRAMS),  # two new numbers: the last, 7
        ("7000 grams, 700 grams in 7 kilograms", "7000", GRAMS),
        ("7000? No, there are 7 grams in 7 kilograms.", "7000", GRAMS),  # the last sentence
        ("There are not 7000 grams in 7 kilograms.", "7000", GRAMS),  # a negation
        ("Maybe 7000 grams in 7 kilograms.", "7000", GRAMS),  # a hedge
        ("7 minus 5", "7", "What is 12 minus 5?"),  # an operand stays no answer
        ("20–11", "20", "What is nineteen minus eleven?"),  # an expression, with an en dash
        ("The expansion of 7**2 is indeed 7.", "2", "What is seventeen minus seven?"),
        ("7 times 1000 makes 7 kilograms", "1000", GRAMS),
        ("4 legs times 2 cats", "8", "How many legs do 2 cats have?"),
        ("There are 8 legs in 2 cats, 4 each.", "8", "How many legs do 2 cats have?"),
    ],
)
def test_number_refuses_echoes_and_rival_numbers(
    answer: str, reference: str, question: str
) -> None:
    assert score("number", answer, reference, question) == 0.0


def test_number_without_the_question_scores_as_before() -> None:
    assert score("number", "There are 7000 grams in 7 kilograms.", "7000", None) == 0.0
    assert score("number", "There are 7000 grams in 7 kilograms.", "7", None) == 1.0


def test_the_questions_numbers_in_words_and_the_one_new_value() -> None:
    assert word_values("How many legs do twenty-one cats and one dog have?") == [21.0, 1.0]
    assert word_values("Someone gave seventy apples") == [70.0]  # "someone" is no "one"
    assert new_value([7000.0, 7.0], [7.0]) == 7000.0
    assert new_value([7000.0, 7000.0, 7.0], [7.0]) == 7000.0  # one distinct value
    assert new_value([7000.0, 700.0, 7.0], [7.0]) is None
    assert new_value([7.0, 7000.0], [7.0]) is None  # the last number is no echo


# --- the question, and the fingerprint ---------------------------------------------------------


def test_the_question_is_the_last_user_message() -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": GRAMS},
    ]
    assert question_of(chat) == GRAMS
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is"}, {"text": "2?"}]}]
    assert question_of(parts) == "What is\n2?"
    assert question_of([{"role": "system", "content": "x"}]) == ""


@pytest.mark.parametrize("spec", ["exact", "sequence", "choice", "math", "regex:^[0-9]+$"])
def test_the_other_verifiers_ignore_the_question(spec: str) -> None:
    assert score(spec, "42", "42", "What is 40 + 2?") == score(spec, "42", "42", None) == 1.0


def test_versions_name_only_the_verifiers_that_changed() -> None:
    assert versions(["exact", "none", "regex:^a$"]) == {}
    assert versions(["number", "exact", "short", "number"]) == {
        "verifiers": {"number": VERSIONS["number"], "short": VERSIONS["short"]}
    }
