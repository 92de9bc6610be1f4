"""Fusion of a small real harvest of the shipped zoo: label-free vote beats the confidently
wrong teacher on units and finds the facts only gemma-tiny knows; min_ce (through the CLI, with
the teachers loaded as scorers) gives every prompt a target."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml

from avocado_llm.cli import main
from avocado_llm.config import Recipe, load_recipe
from avocado_llm.fusion import fuse, read_fused, read_report
from avocado_llm.harvest import harvest, read_records

FAMILIES = ["units", "facts", "arithmetic"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared, busy CPU two threads
    per forward pass wait on each other (30x slower seen); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path) -> tuple[Path, Recipe]:
    root = tmp_path_factory.mktemp("fusion-zoo")
    data = {
        "name": "fusion-test",
        "output_dir": str(root / "runs"),
        "world": {"families": FAMILIES, "zoo_dir": str(zoo_dir)},  # unverified: facts, units
        "teachers": [
            {"name": name, "zoo": True} for name in ("gemma-tiny", "gpt-oss-tiny", "qwen-tiny")
        ],
        "harvest": {"prompts_per_family": 30, "max_new_tokens": 16, "top_logprobs": 5},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    recipe = load_recipe(path)
    summary = asyncio.run(harvest(recipe, progress=False, device="cpu"))
    assert summary.ok and summary.written == 3 * 3 * 30
    return path, recipe


@pytest.fixture(scope="module")
def records(harvested: tuple[Path, Recipe]) -> pa.Table:
    return read_records(harvested[1].run_dir / "harvest")


def test_vote_beats_the_noisy_teacher_without_gold(records: pa.Table) -> None:
    unverified = {"facts", "units"}
    _, voted = fuse(records, "vote", unverified=unverified)
    _, qwen = fuse(records, "single:qwen-tiny", unverified=unverified)

    units = voted.families["units"]
    assert units.kept == units.total == 30
    assert units.target_accuracy > qwen.families["units"].target_accuracy
    assert voted.families["facts"].target_accuracy >= 0.8
    # gemma-tiny, the teacher that knows the facts, wins them without any label.
    facts = voted.families["facts"].wins
    assert max(facts, key=facts.get) == "gemma-tiny"

    examples, verified = fuse(records, "verify", unverified=unverified)
    assert {ex.strategy for ex in examples if ex.family in unverified} == {"vote"}
    assert verified.families["arithmetic"].target_accuracy == 1.0


def test_fuse_command_runs_min_ce_with_the_teachers_as_scorers(
    harvested: tuple[Path, Recipe], capsys: pytest.CaptureFixture[str]
) -> None:
    path, recipe = harvested
    assert main(["fuse", str(path), "--strategy", "min_ce", "--device", "cpu"]) == 0

    out = capsys.readouterr().out
    assert "Fusion 'min_ce'" in out and "wins gemma-tiny" in out and "evaluation data" in out
    fused = recipe.run_dir / "fusion" / "min_ce.parquet"
    examples = read_fused(fused)
    assert len({ex.prompt_id for ex in examples}) == len(examples) == 90
    assert all(sum(ex.weights.values()) == pytest.approx(1.0) for ex in examples)
    report = read_report(fused)
    assert all(f.kept == f.total == 30 for f in report.families.values())


def test_score_sync_reads_back_the_log_probs_of_generation(zoo_dir: Path) -> None:
    from avocado_llm.teachers import SamplingParams
    from avocado_llm.teachers.hf import LocalTeacher
    from avocado_llm.world.tasks import generate

    teacher = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=2)
    conversations = [ex.messages for ex in generate(["arithmetic"], "train", 3)]
    answers = teacher.generate_sync(conversations, SamplingParams(max_new_tokens=16))
    texts = [a[0].text for a in answers]
    scored = teacher.score_sync(conversations, texts)  # two batches, one padded
    for (answer,), logprobs in zip(answers, scored, strict=True):
        generated = [p.logprob for p in answer.logprobs]
        # The answer's tokens, then the end-of-turn marker the template adds.
        assert logprobs[:-1] == pytest.approx(generated, abs=1e-4)
        assert len(logprobs) == len(generated) + 1 and -1.0 < logprobs[-1] <= 0.0
