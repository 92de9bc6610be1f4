"""The real-world example sources (examples/real, ``avocado data real-example``): committed
bytes equal the generator's, every reference passes its own source's verifier, prompts are
distinct, and recipes/real-small.yaml's split holds at least 200 held-out prompts per source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from avocado_llm.data.real_examples import FILES, write_real_examples
from avocado_llm.data.verifiers import verifier

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "examples" / "real"
VERIFIERS = {"knowledge": "short", "words": "short", "numbers": "number"}


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_committed_sources_are_the_generators_bytes(tmp_path: Path) -> None:
    paths = write_real_examples(tmp_path)
    assert [p.name for p in paths] == list(FILES)
    for path in paths:
        assert path.read_bytes() == (REAL / path.name).read_bytes(), path.name


@pytest.mark.parametrize("name", VERIFIERS)
def test_every_reference_passes_its_verifier_and_prompts_are_distinct(name: str) -> None:
    data = rows(REAL / f"{name}.jsonl")
    check = verifier(VERIFIERS[name])
    assert check is not None
    prompts = Counter(r["prompt"].strip().lower() for r in data)
    assert prompts.most_common(1)[0][1] == 1
    for r in data:
        assert r["reference"].strip(), r
        assert check(r["reference"], r["reference"]) == 1.0, r
    # A typical wrong answer is refused (a sentence around the right word is not the word).
    if VERIFIERS[name] == "short":
        assert check(f"Maybe {data[0]['reference']} or not", data[0]["reference"]) == 0.0
        assert check(f"It is {data[0]['reference']}.", data[0]["reference"]) == 1.0
    else:
        assert check(f"The answer is {int(data[0]['reference']) + 1}.", data[0]["reference"]) == 0.0


def test_some_spot_checks() -> None:
    """A few references by hand: the lists are the project's own data."""
    index = {r["prompt"]: r["reference"] for n in VERIFIERS for r in rows(REAL / f"{n}.jsonl")}
    assert index["What is the capital of France? Answer with the name only."] == "Paris"
    assert index["On which continent is Kenya? Answer with the name only."] == "Africa"
    assert index["What is the plural of 'mouse'? Answer with one word."] == "mice"
    assert index["What is the opposite of 'hot'? Answer with one word."] == "cold"
    assert index["What is the past tense of 'go'? Answer with one word."] == "went"
    assert index["How many legs do 3 spiders have?"] == "24"
    assert index["What is seven plus eight?"] == "15"
    assert index["How many minutes are in 4 hours?"] == "240"
    assert index["How many letters are in the word 'banana'?"] == "6"


def test_the_recipe_holds_out_200_prompts_per_source() -> None:
    from avocado_llm.config import load_recipe
    from avocado_llm.data.prompts import check_sources
    from avocado_llm.data.real_examples import HELDOUT

    recipe = load_recipe(ROOT / "recipes" / "real-small.yaml")
    sources = {s.name: s for s in recipe.data.sources}
    assert set(sources) == set(VERIFIERS)
    for name, source in sources.items():
        assert source.verifier == VERIFIERS[name]
        assert source.heldout_fraction == HELDOUT[name]
    for name, report in check_sources(recipe.data.sources).items():
        assert report.heldout >= 200, (name, report.heldout)
        assert report.skipped == 0 and report.duplicates == 0
    assert recipe.eval.heldout_per_source is not None and recipe.eval.heldout_per_source >= 200
    # The few-shot examples of the base teacher are in none of the sources.
    (gemma,) = [t for t in recipe.teachers if t.prompt_template is not None]
    asked = {r["prompt"] for n in VERIFIERS for r in rows(REAL / f"{n}.jsonl")}
    shots = [line.removeprefix("Question: ") for line in gemma.prompt_template.prefix.splitlines()]
    assert shots and not asked & set(shots)
    # The student: SmolLM2 pruned to half its parameters, trained with KD and without.
    assert recipe.student.init_from_teacher == "smollm2-135m"
    assert recipe.student.prune.max_params == 134_515_008 // 2
    assert set(recipe.eval.baselines) >= {"sft", "single:gemma-3-270m"}  # the best teacher
