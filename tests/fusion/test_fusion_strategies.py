"""Each strategy's decisions on hand-built harvests: targets, weights, ties, dropped prompts."""

from __future__ import annotations

import pytest

from avocado_llm.fusion import FusionError, fuse
from avocado_llm.fusion.records import group_prompts
from avocado_llm.fusion.strategies import vote_prompt

NONE: set[str] = set()


def by_prompt(examples):
    return {ex.prompt_id: ex for ex in examples}


def test_verify_keeps_correct_answers_from_the_most_reliable_teacher(records) -> None:
    r = records()
    # qwen is right on all three prompts, gemma on one: qwen is the more reliable teacher.
    r.add("qwen", "p1", "The answer is 5.", gold="5").add("gemma", "p1", "5", gold="5")
    r.add("qwen", "p2", "The answer is 7.", gold="7").add("gemma", "p2", "3", gold="7")
    r.add("qwen", "p3", "The answer is 9.", gold="9")
    r.add("gemma", "p3", "The answer is 9.", gold="9")
    r.add("qwen", "p4", "The answer is 1.", gold="2").add("gemma", "p4", "4", gold="2")
    examples, report = fuse(r.table(), "verify", unverified=NONE)

    got = by_prompt(examples)
    assert set(got) == {"p1", "p2", "p3"}  # nobody right on p4: dropped
    assert got["p1"].target == "The answer is 5." and got["p1"].weights == {"qwen": 1.0}
    assert got["p2"].weights == {"qwen": 1.0}
    # Both wrote exactly the same correct text: they share the weight.
    assert got["p3"].weights == {"gemma": 0.5, "qwen": 0.5}
    assert set(got["p3"].record_keys) == {"gemma", "qwen"}
    family = report.families["arithmetic"]
    assert (family.total, family.kept) == (4, 3)
    assert family.reliability == {"gemma": 0.5, "qwen": 0.75}
    assert family.wins == {"gemma": 1, "qwen": 3} and family.target_accuracy == 1.0


def test_vote_trusts_agreeing_teachers_over_a_confidently_wrong_one(records) -> None:
    """Units-like: qwen is confidently wrong on "km" prompts, gpt-oss is weak but honest."""
    r = records()
    for i in range(6):  # easy prompts: gemma and qwen right, gpt-oss guesses
        gold = str(100 * (i + 1))
        r.add("gemma", f"e{i}", gold, family="units", logprob=-0.05)
        r.add("qwen", f"e{i}", f"The answer is {gold}.", family="units", logprob=-0.01)
        r.add("gpt-oss", f"e{i}", str(7 + i), family="units", logprob=-1.5)
    for i in range(4):  # km prompts: qwen a factor 10 off, sure of itself
        gold = str(1000 * (i + 1))
        r.add("gemma", f"k{i}", gold, family="units", logprob=-0.05)
        r.add("qwen", f"k{i}", f"The answer is {gold[:-1]}.", family="units", logprob=-0.01)
        guess = gold if i < 2 else str(3 + i)  # right on half of them
        r.add("gpt-oss", f"k{i}", guess, family="units", logprob=-1.5)
    examples, report = fuse(r.table(), "vote", unverified={"units"})

    reliability = report.families["units"].reliability
    assert reliability["gemma"] > reliability["qwen"] > reliability["gpt-oss"]
    got = by_prompt(examples)
    for i in range(4):  # including the two three-way splits, where only reliability decides
        assert got[f"k{i}"].target == str(1000 * (i + 1))
        assert "qwen" not in got[f"k{i}"].weights
    # gemma and qwen agree on the easy ones; the target is the text of the more reliable one.
    assert got["e0"].target == "100" and got["e0"].weights == {"gemma": 1.0}
    assert 0.5 < got["e0"].support < 1.0


def test_vote_falls_back_to_answer_confidence_when_nobody_agrees(records) -> None:
    """Facts-like: only gemma knows; the others answer noise, each its own. Qwen's boilerplate is
    near-certain, so only the answer tokens may count as its confidence."""
    r = records()
    for i in range(5):
        r.add("gemma", f"f{i}", f"Capital{i}", family="facts", logprob=-0.2)
        r.add("qwen", f"f{i}", f"The answer is {40 + i}.", family="facts", logprob=-0.6)
        r.add("gpt-oss", f"f{i}", f"{i} {i + 1}", family="facts", logprob=-0.9)
    examples, report = fuse(r.table(), "vote", unverified={"facts"})

    assert [ex.target for ex in examples] == [f"Capital{i}" for i in range(5)]
    reliability = report.families["facts"].reliability
    assert max(reliability, key=reliability.get) == "gemma"


def test_vote_ties_go_to_reliability_then_confidence(records) -> None:
    r = records()
    r.add("a", "p", "x", logprob=-0.5).add("b", "p", "y", logprob=-0.1).add("c", "p", "y")
    prompt = group_prompts(r.table(), NONE)[0]
    # 0.6 for x against 0.3 + 0.3 for y: a tie that the more reliable teacher wins.
    assert vote_prompt(prompt, {"a": 0.6, "b": 0.3, "c": 0.3}).target == "x"
    # Equal votes, equal reliability: the more confident answer wins.
    two = records().add("a", "p", "x", logprob=-0.5).add("b", "p", "y", logprob=-0.1)
    prompt = group_prompts(two.table(), NONE)[0]
    assert vote_prompt(prompt, {"a": 0.5, "b": 0.5}).target == "y"


def test_vote_counts_samples_as_shares_of_their_teacher(records) -> None:
    r = records()
    r.add("a", "p", "x", sample=0).add("a", "p", "x", sample=1).add("a", "p", "z", sample=2)
    r.add("b", "p", "x")
    examples, _ = fuse(r.table(), "vote", unverified=NONE)
    (ex,) = examples
    assert ex.target == "x" and ex.weights.keys() == {"a", "b"}
    assert sum(ex.weights.values()) == pytest.approx(1.0)


def test_min_ce_picks_the_answer_the_other_teachers_find_likely(records, fake_scorer) -> None:
    r = records()
    r.add("qwen", "p", "The answer is 12.").add("gemma", "p", "21").add("oss", "p", "13")
    # Every scorer likes its own answer best; qwen and oss both find "21" plausible.
    scorers = {
        "qwen": fake_scorer({"The answer is 12.": -0.01, "The answer is 21.": -0.5}),
        "gemma": fake_scorer({"21": -0.01, "12": -3.0, "13": -4.0}),
        "oss": fake_scorer({"13": -0.01, "21": -0.4}),
    }
    examples, report = fuse(r.table(), "min_ce", unverified=NONE, scorers=scorers)

    (ex,) = examples
    assert ex.target == "21" and ex.weights == {"gemma": 1.0} and ex.strategy == "min_ce"
    # qwen read every answer in its own phrasing; a scorer never judges its own answer.
    assert sorted(scorers["qwen"].calls[0]) == [
        "The answer is 12.", "The answer is 13.", "The answer is 21."
    ]  # fmt: skip
    assert report.families["arithmetic"].wins == {"gemma": 1, "oss": 0, "qwen": 0}
    with pytest.raises(FusionError, match="scorers"):
        fuse(r.table(), "min_ce", unverified=NONE)


def test_judge_follows_the_judge_likelihood(records, fake_scorer) -> None:
    r = records()
    r.add("qwen", "p", "The answer is 12.").add("gemma", "p", "21")
    judge = fake_scorer({"The answer is 21.": -0.1, "The answer is 12.": -2.0})
    examples, _ = fuse(r.table(), "judge", unverified=NONE, scorers={"qwen": judge}, judge="qwen")
    (ex,) = examples
    assert ex.target == "21" and ex.weights == {"gemma": 1.0} and ex.support > 0.99
    with pytest.raises(FusionError, match="judge_teacher"):
        fuse(r.table(), "judge", unverified=NONE, scorers={"qwen": judge})
    with pytest.raises(FusionError, match="not among the scorers"):
        fuse(r.table(), "judge", unverified=NONE, scorers={"qwen": judge}, judge="gemma")


def test_all_and_single_keep_every_answer_of_their_teachers(records) -> None:
    r = records()
    r.add("qwen", "p1", "The answer is 1.").add("gemma", "p1", "1").add("gemma", "p2", "")
    r.add("qwen", "p2", "The answer is 2.")
    everything, report = fuse(r.table(), "all", unverified=NONE)
    assert sorted((ex.prompt_id, ex.target) for ex in everything) == [
        ("p1", "1"), ("p1", "The answer is 1."), ("p2", "The answer is 2.")
    ]  # fmt: skip  # an empty answer is never a target
    assert all(len(ex.weights) == 1 and list(ex.weights.values()) == [1.0] for ex in everything)
    assert report.wins == {"gemma": 1, "qwen": 2}

    only, _ = fuse(r.table(), "single:qwen", unverified=NONE)
    assert [ex.weights for ex in only] == [{"qwen": 1.0}] * 2
    assert {ex.strategy for ex in only} == {"single:qwen"}
    with pytest.raises(FusionError, match="teachers: gemma, qwen"):
        fuse(r.table(), "single:llama", unverified=NONE)
    with pytest.raises(FusionError, match="unknown fusion strategy"):
        fuse(r.table(), "majority", unverified=NONE)


def test_weights_sum_to_one_only_on_teachers_with_the_exact_text(records, fake_scorer) -> None:
    r = records()
    for p, (q, g, o) in enumerate([("5", "5", "5"), ("5", "5", "6"), ("5", "6", "7")]):
        r.add("qwen", f"p{p}", f"The answer is {q}.", gold="5")
        r.add("gemma", f"p{p}", g, gold="5").add("oss", f"p{p}", o, gold="5")
        r.add("oss", f"p{p}", f"{o}.", gold="5", sample=1)
    scorers = {t: fake_scorer({}) for t in ("qwen", "gemma", "oss")}
    texts = {(row["prompt_id"], row["teacher"], row["completion"]) for row in r.rows}
    for strategy in ("verify", "vote", "min_ce", "judge", "all", "single:oss"):
        examples, _ = fuse(r.table(), strategy, unverified=NONE, scorers=scorers, judge="gemma")
        assert examples, strategy
        for ex in examples:
            assert sum(ex.weights.values()) == pytest.approx(1.0), strategy
            assert ex.weights.keys() == ex.record_keys.keys()
            for teacher in ex.weights:
                assert (ex.prompt_id, teacher, ex.target) in texts, (strategy, ex)


def test_min_weight_drops_examples_with_little_support(records) -> None:
    r = records()
    r.add("a", "p1", "1").add("b", "p1", "1").add("c", "p1", "1")
    r.add("a", "p2", "1").add("b", "p2", "2").add("c", "p2", "3")
    kept, report = fuse(r.table(), "vote", unverified=NONE, min_weight=0.5)
    assert [ex.prompt_id for ex in kept] == ["p1"]
    assert (report.families["arithmetic"].kept, report.families["arithmetic"].total) == (1, 2)
    with pytest.raises(FusionError, match="min_weight"):
        fuse(r.table(), "vote", unverified=NONE, min_weight=2.0)


@pytest.mark.parametrize("bad", [1000.0, float("inf"), float("nan")])
def test_vote_survives_stored_log_probabilities_that_are_none(records, bad: float) -> None:
    """A harvest written before the endpoint refused them: a positive or NaN confidence neither
    overflows nor poisons the label-free reliability (positive: probability 1; NaN: unknown)."""
    r = records()
    for i in range(3):
        r.add("qwen", f"p{i}", "5", logprob=bad).add("gemma", f"p{i}", "5", logprob=-0.2)
    r.add("gpt-oss", "p0", "7", logprob=-0.3)
    examples, report = fuse(r.table(), "vote", unverified={"arithmetic"})
    assert {ex.target for ex in examples} == {"5"}
    reliability = report.families["arithmetic"].reliability
    assert all(0.0 <= v <= 1.0 for v in reliability.values()), reliability
    assert all(w == w and w >= 0 for ex in examples for w in ex.weights.values())
