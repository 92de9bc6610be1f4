"""Your own prompt data through the loop: the zoo teachers harvest a JSONL chat source and a CSV
prompt source (``data.sources``, no tiny-world family), a rerun resumes, a source edited since
is refused, fusion verifies the source that has a verifier and votes on the one that has none,
and a student trains a few steps on the result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import Recipe, load_recipe
from avocado_llm.data.verifiers import verifier
from avocado_llm.harvest import HarvestError, harvest, read_records
from avocado_llm.teachers import Completion, SamplingParams, Teacher, load_teacher
from avocado_llm.teachers.base import Messages

SYSTEM = "You are a careful assistant."
CHATS = [
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Write these words backwards: cat moon bee"},
        {"role": "assistant", "content": "bee moon cat"},
        {"role": "user", "content": "Reverse the order of these words: cow ant"},
        {"role": "assistant", "content": "ant cow"},
    ],
    [
        {"role": "user", "content": "Put these words in the opposite order: gold cat bee"},
    ],
]
SUMS = [
    ("34 + 50 = ?", "84"),
    ("Please calculate the sum of 24 and 43.", "67"),
    ("12 + 7 = ?", "19"),
]


class Recorder:
    """A real teacher that remembers the conversations it is asked."""

    def __init__(self, inner: Teacher) -> None:
        self.inner, self.info = inner, inner.info
        self.asked: list[Messages] = []

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        self.asked += conversations
        return await self.inner.generate(conversations, params)

    async def aclose(self) -> None:
        await self.inner.aclose()


def recorders(recipe: Recipe) -> list[Recorder]:
    return [Recorder(load_teacher(t, recipe, "cpu")) for t in recipe.teachers]


@pytest.fixture
def own_recipe(tmp_path: Path, zoo_dir: Path) -> Path:
    (tmp_path / "chats.jsonl").write_text(
        "".join(json.dumps({"messages": chat}) + "\n" for chat in CHATS), encoding="utf-8"
    )
    lines = ["question,answer", *(f'"{q}",{a}' for q, a in SUMS)]
    (tmp_path / "sums.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {
        "name": "own-data",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": [], "zoo_dir": str(zoo_dir)},
        "data": {
            "sources": [
                {
                    "name": "chats",
                    "path": "chats.jsonl",
                    "messages": "messages",
                    "heldout_fraction": 0.0,
                },
                {
                    "name": "sums",
                    "path": "sums.csv",
                    "prompt": "question",
                    "reference": "answer",
                    "verifier": "number",
                    "heldout_fraction": 0.0,
                },
            ]
        },
        "teachers": [{"name": n, "zoo": True} for n in ("qwen-tiny", "gemma-tiny")],
        "harvest": {"max_new_tokens": 8, "top_logprobs": 3, "batch_size": 2, "shard_size": 4},
        "training": {"steps": 2, "batch_size": 2, "warmup_steps": 0},
    }
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_sources_are_harvested_resumed_fused_and_distilled(own_recipe: Path) -> None:
    recipe = load_recipe(own_recipe)
    out = recipe.run_dir / "harvest"

    first = recorders(recipe)
    asyncio.run(harvest(recipe, limit=3, teachers=first, progress=False))
    assert [len(t.asked) for t in first] == [3, 3]
    rest = recorders(recipe)
    summary = asyncio.run(harvest(recipe, teachers=rest, progress=False))
    assert [len(t.asked) for t in rest] == [2, 2]  # the 3 done prompts are not asked again
    assert summary.ok and summary.written == 4

    # The chat goes whole: system prompt, earlier turns, up to the user turn to answer.
    asked = [m for t in (*first, *rest) for m in t.asked]
    assert CHATS[0][:4] in asked
    records = read_records(out).to_pylist()
    assert len(records) == 2 * (len(CHATS) + len(SUMS))
    assert {r["family"] for r in records} == {"chats", "sums"}
    by_text = {r["messages"][-1]["content"]: r for r in records}
    assert by_text["Reverse the order of these words: cow ant"]["gold"] == "ant cow"
    assert by_text["Reverse the order of these words: cow ant"]["messages"] == CHATS[0][:4]
    assert by_text["12 + 7 = ?"]["gold"] == "19"
    assert by_text["Put these words in the opposite order: gold cat bee"]["gold"] is None
    assert all(  # <source>-<hash of the normalized chat>, as a tiny-world id is <family>-<hash>
        r["prompt_id"].startswith(f"{r['family']}-") and len(r["prompt_id"].split("-")[-1]) == 32
        for r in records
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"chats", "sums"}
    assert all(d.startswith("sha256:") for d in manifest["sources"].values())

    # A source edited since its harvest is refused by name, old → new hash, nothing asked.
    sums = recipe.data.sources[1].path
    old = manifest["sources"]["sums"]
    sums.write_text(sums.read_text() + '"3 + 4 = ?",7\n', encoding="utf-8")
    again = recorders(recipe)
    with pytest.raises(HarvestError, match=rf"sums: {old} → sha256:[0-9a-f]{{64}}"):
        asyncio.run(harvest(recipe, teachers=again, progress=False))
    assert [len(t.asked) for t in again] == [0, 0]
    assert json.loads((out / "manifest.json").read_text())["sources"]["sums"] == old
    sums.write_text("\n".join(["question,answer", *(f'"{q}",{a}' for q, a in SUMS)]) + "\n")

    _fuse_and_distill(recipe)


def _fuse_and_distill(recipe: Recipe) -> None:
    from avocado_llm.distill.pipeline import distill, student_corpus
    from avocado_llm.fusion import fuse_recipe, read_fused

    fused = fuse_recipe(recipe, "verify", note=lambda _: None)
    assert fused.report is not None
    assert set(fused.report.families) == {"chats", "sums"}
    examples = read_fused(fused.path)
    number = verifier("number")
    assert number is not None
    gold = {q: a for q, a in SUMS}
    verified = [e for e in examples if e.family == "sums"]
    assert verified, "the zoo teachers know these sums: some answer must verify"
    for ex in verified:  # only answers the source's verifier accepts are learnt
        assert ex.strategy == "verify"
        assert number(ex.target, gold[ex.messages[-1]["content"]]) == 1.0
    assert fused.report.families["sums"].target_accuracy == 1.0
    chats = [e for e in examples if e.family == "chats"]
    assert {e.strategy for e in chats} == {"vote"}  # no verifier: label-free
    assert len(chats) == len(CHATS)
    assert fused.report.families["chats"].target_accuracy is None

    corpus = student_corpus(recipe)  # the new student's tokenizer learns the sources' text
    assert corpus is not None and SYSTEM in corpus and "19" in corpus
    student = distill(recipe, strategy="verify")
    meta = json.loads((student / "avocado.json").read_text())
    assert meta["items"]["examples"] == len(examples)
    assert meta["final_loss"] is not None


@pytest.mark.parametrize("kind", ["char_bpe", "unigram"])
def test_a_new_student_spells_characters_its_corpus_never_had(kind: str) -> None:
    """A source's text is not the tiny world's: a character the student tokenizer never saw
    is spelled with byte pieces, never ``<unk>``, and decodes back to itself."""
    from avocado_llm.config.student import StudentConfig
    from avocado_llm.distill.student import build_student

    _, tok = build_student(StudentConfig(tokenizer_type=kind), corpus=["the answer is 42"] * 20)
    text = "Ünïcödé 日本語 ☃ 🥑: ½ → ∞"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_avocado_run_takes_a_recipe_of_sources_only(tmp_path: Path, zoo_dir: Path) -> None:
    """The whole loop on ``data.sources`` alone: every stage reads them, the report scores the
    verified source under ``families`` and judges the open one."""
    from avocado_llm.run import run
    from avocado_llm.world import tasks

    sums = tasks.generate(["arithmetic"], "train", 12, 0)
    lines = ["question,answer", *(f'"{ex.prompt}",{ex.answer}' for ex in sums)]
    (tmp_path / "sums.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chats = tasks.generate(["reverse"], "train", 8, 0)
    (tmp_path / "chats.jsonl").write_text(
        "".join(json.dumps({"messages": ex.messages}) + "\n" for ex in chats), encoding="utf-8"
    )
    data = {
        "name": "own-run",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": [], "zoo_dir": str(zoo_dir)},
        "data": {
            "sources": [
                {"name": "sums", "path": "sums.csv", "prompt": "question",
                 "reference": "answer", "verifier": "number", "heldout_fraction": 0.4},
                {"name": "chats", "path": "chats.jsonl", "messages": "messages",
                 "heldout_fraction": 0.4},
            ]
        },
        "teachers": [{"name": n, "zoo": True} for n in ("qwen-tiny", "gemma-tiny")],
        "harvest": {"max_new_tokens": 8, "top_logprobs": 3, "batch_size": 8},
        "training": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
        "eval": {"heldout_per_source": 2, "max_new_tokens": 8, "batch_size": 8},
    }  # fmt: skip
    path = tmp_path / "own-run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    report = run(load_recipe(path), device="cpu")
    student = report["models"]["student"]
    assert student["families"]["sums"]["n"] == 2
    assert set(report["judged"]["chats"]) == {"qwen-tiny", "gemma-tiny"}
