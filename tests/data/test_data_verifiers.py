"""Per-source verifiers (``data.verifiers``): realistic model answers, right and wrong, for every
spec; hostile input (huge, non-string, empty, math bombs in a worker thread); spec checks.

(Named ``test_data_verifiers.py``: ``tests/world/test_verifiers.py`` exists, and test folders
have no ``__init__.py``, so two files of one name would collide on import.)
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from avocado_llm.config.sources import VERIFIERS, verifier_problems
from avocado_llm.data.verifiers import (
    MAX_ANSWER_CHARS,
    NAMES,
    Verifier,
    check_spec,
    final_answer,
    verifier,
)


def score(spec: str, answer: object, reference: object) -> float:
    v = verifier(spec)
    assert isinstance(v, Verifier)
    return v(answer, reference)


def in_thread(spec: str, answer: str, reference: str) -> float:
    """Score in a worker thread (where math-verify's signal timeouts cannot run)."""
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(score(spec, answer, reference)))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the verifier hung in a worker thread"
    return out[0]


# --- the final answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "final", "explicit"),
    [
        ("42", "42", False),
        ("The answer is 42.", "42", True),
        ("Let me think.\n6 * 7 = 42\n\n**Answer:** 42", "42", True),
        ("Step 1 ...\nSo we get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", True),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", True),
        ("Reasoning...\n\nParis\n", "Paris", False),
        ("", "", False),
    ],
)
def test_the_final_answer_is_found_in_a_models_prose(text: str, final: str, explicit: bool) -> None:
    assert final_answer(text) == (final, explicit)


# --- exact ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["Paris", "paris.", "The answer is Paris.", "**Paris**", "`Paris`", "It is Paris!",
     "The capital of France is well known.\n\nAnswer: Paris", "  Paris  \n"],
)  # fmt: skip
def test_exact_accepts_the_reference_in_the_usual_wrappers(answer: str) -> None:
    assert score("exact", answer, "Paris") == 1.0


@pytest.mark.parametrize("answer", ["Lyon", "Paris, France", "Not Paris", "", "The answer is"])
def test_exact_refuses_anything_else(answer: str) -> None:
    assert score("exact", answer, "Paris") == 0.0


def test_exact_compares_a_multi_line_reference_whole() -> None:
    reference = "def f(x):\n    return x + 1"
    assert score("exact", "def f(x):\n    return x + 1\n", reference) == 1.0
    assert score("exact", "def f(x):\n    return x - 1", reference) == 0.0


# --- short ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["Paris", "Paris.", "The capital of France is Paris.", "**Paris**", "The answer is: Paris",
     "The capital of France is **Paris**.", "France's capital is Paris", "It's Paris!",
     "The capital of France is known as 'Paris'.", "paris", "Paris. It has the Eiffel Tower."],
)  # fmt: skip
def test_short_accepts_the_reference_alone_or_ending_a_statement(answer: str) -> None:
    assert score("short", answer, "Paris") == 1.0


@pytest.mark.parametrize(
    "answer",
    ["Paris or London", "Paris, London, Berlin", "London, Paris", "London or Paris",
     "Paris and London", "It is either London or Paris.", "Maybe Paris", "It is not Paris",
     "It isn't Paris.", "No. Paris.", "The capital of France is Paris or Lyon.",
     "The capital of France is London. Paris is nice.", "Paris is the capital of France.",
     "The capital of France is Parisian.", "The past tense of Paris", "Lyon", "",
     "Paris is a city in France with many museums, cafes and lovely parks, and when people "
     "ask which city is the capital of France, the answer that everyone knows is Paris."],
)  # fmt: skip
def test_short_refuses_lists_negations_essays_and_echoes(answer: str) -> None:
    assert score("short", answer, "Paris") == 0.0


def test_short_ignores_accents_and_reads_multi_word_references() -> None:
    assert score("short", "The capital of Costa Rica is San José.", "San Jose") == 1.0
    assert score("short", "The capital of Costa Rica is Jose.", "San Jose") == 0.0
    assert score("short", 'The answer is "loaves".', "loaves") == 1.0
    assert score("short", "Vientiane is the capital of Laos.", "Laos") == 1.0
    # a second candidate glued on with a hyphen is still a second candidate
    assert score("short", 'The opposite of "buy" is "sell-sell"', "sell") == 0.0


def test_short_accepts_everything_exact_accepts() -> None:
    for answer in ["The capital of France is well known.\n\nAnswer: Paris", "`Paris`"]:
        assert score("exact", answer, "Paris") == score("short", answer, "Paris") == 1.0


# --- number --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("The answer is 42.", "42"),
        ("**42**", "42"),
        ("42.0", "42"),
        ("6 * 7 = 42", "42"),
        ("She pays $1,250 in total.", "1250"),
        ("1250", "1,250"),
        ("The temperature drops to −3 degrees.", "-3"),
        ("x = -0.25", "-.25"),
        ("The growth is 50%.", "50"),
        ("The growth is 50%.", "0.5"),
        ("0.5", "50%"),
        ("about 1.5e3 metres", "1500"),
        ("Step 1: 12 apples.\nStep 2: 30 more.\n#### 42", "42"),
        ("So she has 42 apples.\n\nHope this helps!", "42"),
        ("0.1 + 0.2 = 0.30000000000000004", "0.3"),
        ("A spider has 8 legs.", "8"),  # the last number of the last line
        ("The answer is 4.", "4"),
        ("The answer is 42", 42),  # a reference column of integers
        ("4 minus 2 is 2", "2"),  # a result after the expression
        ("4 - 2 = 2", "2"),
        ("The box holds 2", "2"),  # a word ending in x is no operator
        ("Subtracting, we get 2", "2"),
        ("It is -2", "-2"),
    ],
)
def test_number_accepts_the_same_number_however_written(answer: str, reference: object) -> None:
    assert score("number", answer, reference) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("The answer is 43.", "42"),
        ("42 is close, but the answer is 41", "42"),
        ("-42", "42"),
        ("4,2", "42"),  # not a thousands separator: the last number is 2
        ("42.0001", "42"),
        ("forty-two", "42"),
        ("", "42"),
        ("42", ""),
        ("42", "no number here"),
        ("1" * 5000, "1e400"),  # both overflow to inf: never equal
        # the question echoed: the last number is an operand, not a result
        ("4 minus 2", "2"),
        ("Four minus two is 4 minus 2.", "2"),
        ("12 - 6", "6"),
        ("12-6", "6"),
        ("12 −6", "6"),
        ("3x3", "3"),
        ("3 × 3", "3"),
        ("8 divided by 4", "4"),
        ("2 + 2", "2"),
    ],
)
def test_number_refuses_other_numbers(answer: str, reference: object) -> None:
    assert score("number", answer, reference) == 0.0


# --- sequence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["2, 4, 7", "2 4 7", "[2, 4, 7]", "2, 4 and 7", "The answer is 2; 4; 7.",
     "Sorting them gives:\nThe sorted list is: 2, 4, 7"],
)  # fmt: skip
def test_sequence_accepts_the_items_in_order(answer: str) -> None:
    assert score("sequence", answer, "2 4 7") == 1.0
    assert score("sequence", answer, ["2", "4", "7"]) == 1.0  # a list column


@pytest.mark.parametrize("answer", ["7, 4, 2", "2, 4", "2, 4, 7, 9", "", "none"])
def test_sequence_refuses_other_orders_and_lengths(answer: str) -> None:
    assert score("sequence", answer, "2, 4, 7") == 0.0


def test_sequence_words_ignore_case() -> None:
    assert score("sequence", "Apple, banana, Cherry", "apple banana cherry") == 1.0


# --- choice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["B", "(B)", "B)", "B.", "B) Paris", "(b)", "b", "The answer is B", "The answer is (B).",
     "**Answer:** B", "Option B", "\\boxed{B}", "B\n\nBecause Paris is the capital of France.",
     "Let's see: Lyon is wrong.\nAnswer: B) Paris", "The correct option is (B).",
     "Lyon is not it.\nI'd go with (B) Paris.", "So the right choice is B."],
)  # fmt: skip
def test_choice_accepts_the_letter_however_written(answer: str) -> None:
    assert score("choice", answer, "B") == 1.0
    assert score("choice", answer, "(B) Paris") == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "A",
        "(C)",
        "The answer is D",
        "a dog",
        "I think so",
        "Paris, probably",
        "",
        "AB",
        "The option is a good one",
        "Either (A) or (C).",
        "The correct option is (B), no, (C).",
    ],
)
def test_choice_refuses_other_letters_and_prose(answer: str) -> None:
    assert score("choice", answer, "B") == 0.0


def test_choice_matches_the_option_text_when_the_answer_has_no_letter() -> None:
    assert score("choice", "The answer is Paris.", "B) Paris") == 1.0
    assert score("choice", "Lyon", "B) Paris") == 0.0
    assert score("choice", "C) Paris", "B) Paris") == 0.0  # the letter decides


# --- regex ---------------------------------------------------------------------------------


def test_regex_fullmatches_the_final_answer_and_ignores_the_reference() -> None:
    assert score("regex:[0-9]{3}-[0-9]{4}", "Call us at:\n555-1234", "ignored") == 1.0
    assert score("regex:[0-9]{3}-[0-9]{4}", "The answer is 555-1234.", "") == 1.0
    assert score("regex:[0-9]{3}-[0-9]{4}", "555-12345", "") == 0.0
    assert score("regex:(?i)yes", "YES", "") == 1.0
    assert score("regex:yes", "YES", "") == 0.0  # case matters unless the pattern says (?i)


def test_regex_also_matches_a_short_whole_answer() -> None:
    spec = r"regex:(?s)def \w+\(.*\):.*return.*"
    assert score(spec, "def f(x):\n    return x", "") == 1.0


# --- math ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("x = 1/2", "0.5"),
        ("$\\frac{1}{2}$", "0.5"),
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"),
        ("So the result is $\\boxed{1,000}$.", "1000"),
        ("The answer is 42.", "42"),
        ("**42**", "$42$"),
        ("The final answer is $x = -3$", "-3"),
    ],
)
def test_math_accepts_equivalent_expressions(answer: str, reference: str) -> None:
    assert score("math", answer, reference) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [("x = 1/3", "0.5"), ("\\boxed{43}", "42"), ("I do not know.", "42"), ("", "1"), ("1", "")],
)
def test_math_refuses_different_values(answer: str, reference: str) -> None:
    assert score("math", answer, reference) == 0.0


def test_math_works_in_a_worker_thread() -> None:
    # math-verify's signal-based timeouts raise outside the main thread; ours turns them off.
    assert in_thread("math", "\\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert in_thread("math", "\\boxed{\\frac{1}{3}}", "0.5") == 0.0


@pytest.mark.parametrize(
    "bomb",
    [
        "\\boxed{2^{10^{10}}}",
        "\\boxed{9^{9^{9}}}",
        "2**2**2**40",
        "2**(2**40)",
        "\\boxed{(10^{9})!}",
        "$2^{12345678}$",
        "1234567!",
        "\\boxed{10^{9}!}",
        "\\boxed{10**9!}",
        "\\boxed{\\binom{10^{9}}{10^{8}}}",
        "$\\prod_{i=1}^{1000000000} i$",
        "\\boxed{\\Gamma(10^{9})}",
        "factorial(10**9)",
    ],
)
def test_math_bombs_score_zero_instead_of_hanging(bomb: str) -> None:
    started = time.monotonic()
    assert score("math", bomb, "1") == 0.0  # main thread: refused before math-verify's timeouts
    assert time.monotonic() - started < 4  # (each of which waits 5 s)
    assert in_thread("math", bomb, "1") == 0.0
    assert in_thread("math", "1", bomb) == 0.0


def test_math_keeps_ordinary_powers_in_a_worker_thread() -> None:
    assert in_thread("math", "\\boxed{2^{10}}", "1024") == 1.0
    assert in_thread("math", "$x^2 + 2x + 1$", "x^2+2x+1") == 1.0
    assert in_thread("math", "$x^2 + y^2$", "y^2+x^2") == 1.0  # two powers, no tower
    assert in_thread("math", "So it is \\boxed{2^{10}}!", "1024") == 1.0
    assert in_thread("math", "2**10", "1024") == 1.0
    assert in_thread("math", "**42**", "42") == 1.0  # markdown bold is no power
    assert in_thread("math", "\\boxed{5!}", "120") == 1.0
    assert in_thread("math", "\\boxed{\\binom{5}{2}}", "10") == 1.0
    assert in_thread("math", "$\\sum_{i=1}^{4} i$", "10") == 1.0
    assert in_thread("math", "\\boxed{\\sum_{i=1}^{n} i^2}", "\\sum_{i=1}^{n} i^2") == 1.0


# --- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*[n for n in NAMES if n != "none"], "regex:(a+)+b"])
def test_huge_answers_are_capped_and_scored_quickly(spec: str) -> None:
    huge = "a" * (5 * MAX_ANSWER_CHARS) + "\nThe answer is 42."
    started = time.monotonic()
    assert score(spec, huge, "42") == (0.0 if spec.startswith("regex") else 1.0)
    assert score(spec, "(" * 100_000 + "\\boxed{" * 10_000, "42") == 0.0
    assert time.monotonic() - started < 30  # generous: capped input, no runaway parsing


@pytest.mark.parametrize("spec", [n for n in NAMES if n != "none"])
@pytest.mark.parametrize("answer", [None, 42.5, b"\xff\xfe", ["x"], {"a": 1}, object(), ""])
def test_non_string_and_empty_answers_never_raise(spec: str, answer: object) -> None:
    assert score(spec, answer, "42") in (0.0, 1.0)
    assert score(spec, "42", None) == 0.0  # no reference: nothing to be correct against


def test_integer_and_bytes_answers_are_read_as_text() -> None:
    assert score("number", 42, "42") == 1.0
    assert score("exact", b"Paris", "Paris") == 1.0


# --- specs ---------------------------------------------------------------------------------


def test_none_is_no_verifier() -> None:
    assert verifier("none") is None
    assert check_spec("none") is None


@pytest.mark.parametrize("spec", [*NAMES, "regex:^[0-9]+$", "regex:(?i)yes|no"])
def test_known_specs_are_fine_and_verifiers_carry_their_name(spec: str) -> None:
    assert check_spec(spec) is None
    v = verifier(spec)
    assert v is None if spec == "none" else v is not None and v.name == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("numbr", "unknown verifier 'numbr': did you mean 'number'?"),
        ("Exact", "did you mean 'exact'?"),
        ("maths", "did you mean 'math'?"),
        ("regex", "regex needs a pattern: regex:<pattern>"),
        ("regx:[0-9]+", "did you mean 'regex'?"),
        ("regex:", "regex: needs a pattern after the colon"),
        (
            "regex:([0-9]+",
            "the pattern in 'regex:([0-9]+' does not compile: missing ), unterminated",
        ),
        (
            "zzzz",
            "unknown verifier 'zzzz': use one of exact, short, number, sequence, choice, math, "
            "none",
        ),
        ("", "unknown verifier ''"),
        (None, "a verifier must be a string"),
    ],
)
def test_bad_specs_get_a_clear_message(spec: object, message: str) -> None:
    problem = check_spec(spec)
    assert problem is not None and message in problem
    with pytest.raises(ValueError, match=r"verifier|regex|pattern"):
        verifier(spec)  # type: ignore[arg-type]


def test_every_name_the_recipe_schema_accepts_has_a_verifier() -> None:
    assert NAMES == VERIFIERS
    for spec in [*VERIFIERS, "regex:^[0-9]+$", "numbr", "regex:(", "regex:"]:
        assert (check_spec(spec) is None) == (not verifier_problems(spec, "verifier")), spec


def test_a_list_longer_than_the_final_answer_cap_never_matches_a_cut_copy() -> None:
    items = [str(i) for i in range(1000)]
    assert score("sequence", ", ".join(items), ", ".join([*items[:-1], "x"])) == 0.0
    assert score("sequence", ", ".join(items[:100]), ", ".join(items[:100])) == 1.0


def test_math_from_many_threads_at_once_gives_the_same_scores() -> None:
    from concurrent.futures import ThreadPoolExecutor

    cases = [("\\boxed{\\frac{1}{2}}", "0.5", 1.0), ("x = 1/3", "0.5", 0.0), ("**42**", "42", 1.0)]
    cases += [(f"\\boxed{{{i}/4}}", str(i / 4), 1.0) for i in range(1, 30)]
    v = verifier("math")
    assert v is not None
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: v(c[0], c[1]), cases * 4))
    assert got == [c[2] for c in cases] * 4


def test_math_leaves_a_callers_own_alarm_running() -> None:
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert score("math", "\\boxed{\\frac{1}{2}}", "0.5") == 1.0
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 30  # not cancelled by math-verify's own alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == []
