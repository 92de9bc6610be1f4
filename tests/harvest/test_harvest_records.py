"""The harvest record: every field of the contract, top-k from local teachers, provenance,
readable by ``datasets``, and a manifest that agrees with the shards."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import datasets
import pyarrow as pa

from avocado_llm.config import load_recipe
from avocado_llm.harvest import SCHEMA, harvest, harvest_prompts, read_records, record_key
from avocado_llm.teachers import Completion, SamplingParams, TeacherInfo
from avocado_llm.teachers.base import Messages

CONTRACT = {
    "key", "prompt_id", "family", "messages", "gold", "teacher", "teacher_model",
    "teacher_revision", "licence", "sampling", "sample_index", "completion", "reasoning",
    "finish_reason", "token_ids", "tokens", "token_logprobs", "top_ids", "top_tokens",
    "top_logprobs", "prompt_tokens", "completion_tokens", "latency_s", "created_at",
}  # fmt: skip


def test_records_carry_the_contract_top_k_and_provenance(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(teachers=("qwen-tiny", "gemma-tiny", "gpt-oss-tiny")))
    started = datetime.now(UTC)
    summary = asyncio.run(harvest(recipe, progress=False))
    out = recipe.run_dir / "harvest"
    prompts = {ex.id: ex for ex in harvest_prompts(recipe)}
    assert summary.ok and summary.written == 3 * len(prompts) == 3 * 8

    table = read_records(out)
    assert set(table.schema.names) == CONTRACT and table.schema.equals(SCHEMA)
    assert table.num_rows == summary.written
    for row in table.to_pylist():
        example = prompts[row["prompt_id"]]
        assert row["family"] == example.family and row["gold"] == example.answer
        assert row["messages"] == example.messages
        assert row["teacher_revision"].startswith("sha256:")
        assert row["teacher_model"] == str(recipe.world.zoo_dir / row["teacher"])
        assert row["licence"] == f"test licence of {row['teacher']}"
        assert started <= row["created_at"] <= datetime.now(UTC)
        assert json.loads(row["sampling"]) == {
            "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16, "n": 1,
            "top_logprobs": 5, "seed": 0,
        }  # fmt: skip
        info = TeacherInfo(row["teacher"], row["teacher_model"], row["teacher_revision"], "")
        params = SamplingParams(**json.loads(row["sampling"]))
        assert row["key"] == record_key(info, example.messages, params, row["sample_index"])
        positions = len(row["token_ids"])
        assert row["finish_reason"] in ("stop", "length") and row["completion_tokens"] >= positions
        assert len(row["tokens"]) == len(row["token_logprobs"]) == positions <= 16
        for name in ("top_ids", "top_tokens", "top_logprobs"):
            assert len(row[name]) == positions and all(len(top) == 5 for top in row[name])
        # The chosen token's log-probability is the top-1 one under greedy decoding.
        pairs = zip(row["token_logprobs"], row["top_logprobs"], strict=True)
        assert all(lp == top[0] for lp, top in pairs)
        assert row["prompt_tokens"] > 0 and row["latency_s"] > 0

    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "data/**/*.parquet"), cache_dir=str(tmp_path / "hf")
    )["train"]
    assert loaded.num_rows == table.num_rows
    assert sorted(loaded["key"]) == sorted(table["key"].to_pylist())

    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("data/*/*.parquet"))
    assert sorted(s["path"] for s in manifest["shards"]) == files
    for shard in manifest["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() and shard["rows"] <= 3
    assert manifest["records"] == table.num_rows and manifest["recipe"] == "harvest-test"
    qwen = manifest["teachers"]["qwen-tiny"]
    assert qwen["revision"].startswith("sha256:") and qwen["records"] == qwen["prompts"] == 8


def test_without_top_logprobs_the_text_and_tokens_are_kept(write_recipe) -> None:
    recipe = load_recipe(write_recipe(teachers=("qwen-tiny",), top_logprobs=0))
    asyncio.run(harvest(recipe, limit=2, progress=False))
    table = read_records(recipe.run_dir / "harvest")
    assert table.num_rows == 2
    for name in ("top_ids", "top_tokens", "top_logprobs"):
        assert table[name].null_count == 2
    assert all(len(t) > 0 for t in table["tokens"].to_pylist())


def test_the_key_names_one_answer_of_one_model() -> None:
    info = TeacherInfo("qwen-tiny", "zoo/qwen-tiny", "sha256:aaaa", "Apache-2.0")
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    params = SamplingParams(max_new_tokens=16)
    key = record_key(info, messages, params, 0)
    assert len(key) == 64 and key == record_key(info, [dict(messages[0])], params, 0)
    changed = [
        record_key(
            TeacherInfo("gemma-tiny", "zoo/qwen-tiny", "sha256:aaaa", ""), messages, params, 0
        ),
        record_key(
            TeacherInfo("qwen-tiny", "zoo/qwen-tiny", "sha256:bbbb", ""), messages, params, 0
        ),
        record_key(info, [{"role": "user", "content": "What is 2 plus 4?"}], params, 0),
        record_key(info, messages, SamplingParams(max_new_tokens=16, temperature=0.7), 0),
        record_key(info, messages, params, 1),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    # The licence and the number of samples asked for do not change which answer a record is.
    same_model = TeacherInfo("qwen-tiny", "elsewhere", "sha256:aaaa", "other licence")
    assert record_key(same_model, messages, SamplingParams(max_new_tokens=16, n=4), 0) == key


def test_schema_types() -> None:
    assert SCHEMA.field("top_logprobs").type == pa.list_(pa.list_(pa.float32()))
    assert SCHEMA.field("top_ids").type == pa.list_(pa.list_(pa.int32()))
    assert SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert SCHEMA.field("top_logprobs").nullable and not SCHEMA.field("key").nullable


class UnwritableTeacher:
    """A teacher (the protocol, in process) whose answers to some prompts break the record
    schema in ways a parser might miss: a count past int32, a lone surrogate in the text."""

    def __init__(self, poison: dict[str, Completion]) -> None:
        self.info = TeacherInfo("odd", "odd-model", "rev-1", "test")
        self.poison = poison
        self.asked: list[str] = []

    async def generate(
        self, conversations: list[Messages], params: SamplingParams
    ) -> list[list[Completion]]:
        answers = []
        for messages in conversations:
            prompt = messages[-1]["content"]
            self.asked.append(prompt)
            good = Completion("42", "stop", prompt_tokens=5, completion_tokens=2)
            answers.append([self.poison.get(prompt, good)] * params.n)
        return answers

    async def aclose(self) -> None:
        pass


def test_a_record_the_store_cannot_write_is_one_failure_not_a_crash(write_recipe) -> None:
    recipe = load_recipe(write_recipe(teachers=("qwen-tiny",)))
    prompts = harvest_prompts(recipe)
    huge, surrogate = prompts[1].messages[-1]["content"], prompts[6].messages[-1]["content"]
    teacher = UnwritableTeacher(
        {
            huge: Completion("42", "stop", prompt_tokens=5, completion_tokens=3 * 10**9),
            surrogate: Completion("4\ud8002", "stop", prompt_tokens=5, completion_tokens=2),
        }
    )
    summary = asyncio.run(harvest(recipe, teachers=[teacher], progress=False))
    assert (summary.written, summary.failed) == (6, 2)
    out = recipe.run_dir / "harvest"
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["prompt_id"] for f in failures} == {prompts[1].id, prompts[6].id}
    table = read_records(out)
    assert table.num_rows == 6 and len(set(table["key"].to_pylist())) == 6

    # The next run asks only the two again; answered well, nothing is lost or written twice.
    teacher.poison.clear()
    teacher.asked.clear()
    again = asyncio.run(harvest(recipe, teachers=[teacher], progress=False))
    assert (again.written, again.failed) == (2, 0)
    assert sorted(teacher.asked) == sorted([huge, surrogate])
    table = read_records(out)
    assert table.num_rows == 8 and len(set(table["key"].to_pylist())) == 8
