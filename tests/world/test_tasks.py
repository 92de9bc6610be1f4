"""Tiny-world task families: determinism, disjoint splits, varied prompts, correct golds
(the verifiers are in test_verifiers.py).

Golds are recomputed from the prompt text alone (each prompt is parsed back against the
family's templates), so these tests do not trust the generators' own bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from world_helpers import (
    ALL,
    BIG,
    LORE,
    MIN_TRAIN,
    MIN_TRAIN_SMALL,
    N_CAPITAL_PHRASINGS,
    N_HELDOUT,
    N_TRAIN,
    expected_answer,
    gen,
    instance_of,
    parse,
)

from avocado_llm.world.lore import COUNTRIES
from avocado_llm.world.tasks import (
    FAMILIES,
    generate,
    get_family,
)


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


def _tasks_jsonl(*args: str) -> list[dict[str, object]]:
    cmd = [sys.executable, "-m", "avocado_llm.cli", "tasks", "--format", "jsonl", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_tasks_as_jsonl_one_example_a_line_splits_apart():
    """`avocado tasks --format jsonl`: what other tools (lm-eval, TRL) read, one object a line."""
    train = _tasks_jsonl("--split", "train", "-n", "40")
    heldout = _tasks_jsonl("--split", "heldout", "-n", "40", "--seed", "3")
    for split, rows in (("train", train), ("heldout", heldout)):
        assert len(rows) == 40 * len(FAMILIES)
        assert all(set(r) == {"id", "family", "split", "messages", "answer"} for r in rows)
        assert {r["split"] for r in rows} == {split}
        assert [r["family"] for r in rows[::40]] == list(FAMILIES)
        assert len({r["id"] for r in rows}) == len(rows)  # ids are unique
        for r in rows:  # a user's chat message, and the right gold answer for it
            (message,) = r["messages"]
            assert message["role"] == "user"
            assert r["answer"] == expected_answer(r["family"], message["content"])
    # a held-out instance is never a train one, whatever the seeds (ids name instances)
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    # the same rows as the library's generator, in its order
    lib = generate(list(FAMILIES), "heldout", 40, seed=3)
    assert [r["id"] for r in heldout] == [e.id for e in lib]
    assert [r["messages"] for r in heldout] == [e.messages for e in lib]
    assert _tasks_jsonl("sorting", "-n", "2") == [
        {"id": e.id, "family": "sorting", "split": "train", "messages": e.messages,
         "answer": e.answer}
        for e in get_family("sorting").generate("train", 2)
    ]  # fmt: skip
