"""The store on its own: no duplicate keys, atomic shards, a manifest rebuilt from the files,
stray temporary files removed, one writer at a time, weights that changed refused."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from avocado_llm.harvest import (
    HarvestError,
    HarvestStore,
    read_records,
    record_key,
    record_row,
    status,
)
from avocado_llm.teachers import Completion, SamplingParams, TeacherInfo, TokenLogprobs
from avocado_llm.world import tasks

INFO = TeacherInfo("qwen-tiny", "zoo/qwen-tiny", "sha256:0123456789abcdef", "Apache-2.0")
PARAMS = SamplingParams(max_new_tokens=8, top_logprobs=2)


def rows(n: int, info: TeacherInfo = INFO) -> list[dict[str, Any]]:
    """Records of ``n`` arithmetic prompts, each answered "5"."""
    token = TokenLogprobs(7, "5", -0.1, [7, 8], ["5", "6"], [-0.1, -2.4])
    answer = Completion("5", "stop", [7], [token], prompt_tokens=9, completion_tokens=2)
    now = datetime.now(UTC)
    return [
        record_row(record_key(info, ex.messages, PARAMS, 0), ex, info, PARAMS, 0, answer, now)
        for ex in tasks.generate(["arithmetic"], "train", n, seed=0)
    ]


def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def test_no_key_is_written_twice(tmp_path: Path) -> None:
    store = HarvestStore(tmp_path, "run", shard_size=4)
    batch = rows(6)
    assert store.write("qwen-tiny", batch + batch[:2]) == 6  # duplicates within one call
    assert store.write("qwen-tiny", batch) == 0  # and across calls
    store.close()
    assert [s["rows"] for s in manifest(tmp_path)["shards"]] == [4, 2]
    again = HarvestStore(tmp_path, "run", shard_size=4)  # and across runs
    assert again.write("qwen-tiny", rows(8)) == 2
    again.close()
    table = read_records(tmp_path)
    assert table.num_rows == 8 and len(set(table["key"].to_pylist())) == 8


def test_opening_rebuilds_the_manifest_from_the_shards(tmp_path: Path) -> None:
    store = HarvestStore(tmp_path, "run", shard_size=3)
    store.write("qwen-tiny", rows(6))
    store.close()
    before = manifest(tmp_path)
    # A crash after a shard was renamed into place but before the manifest was rewritten, and
    # one in the middle of writing a shard (its temporary file is left behind).
    shard = tmp_path / before["shards"][0]["path"]
    shutil.copy(shard, shard.with_name("part-000009-0000abcd.parquet"))
    (tmp_path / "manifest.json").write_text("{")
    stray = shard.with_name(".part-000010-1234abcd.parquet.0a1b2c3d.tmp")
    stray.write_bytes(b"half a shard")
    (tmp_path / "failures.jsonl").write_text('{"key": "k", "teacher": "qwen-tiny"}\n{"key": "k2')

    store = HarvestStore(tmp_path, "run")
    store.close()
    after = manifest(tmp_path)
    assert not stray.exists()
    assert len(after["shards"]) == 3 and after["records"] == 9
    assert after["teachers"]["qwen-tiny"]["records"] == 6  # the copied shard adds no new key
    assert (tmp_path / "failures.jsonl").read_text() == '{"key": "k", "teacher": "qwen-tiny"}\n'
    assert read_records(tmp_path).num_rows == 6  # read_records drops the duplicated copy
    assert status(tmp_path)["qwen-tiny"].records == 6


def test_status_counts_pending_failures_and_finish_reasons(tmp_path: Path) -> None:
    store = HarvestStore(tmp_path, "run")
    done, failed = rows(5)[:3], rows(5)[3:]
    store.record_failures("qwen-tiny", [(r["key"], r["prompt_id"], 0) for r in rows(5)], "boom")
    store.write("qwen-tiny", done)
    store.close()
    report = status(tmp_path)["qwen-tiny"]
    assert (report.records, report.prompts, report.failed) == (3, 3, len(failed))
    assert report.finish_reasons == {"stop": 3} and report.completion_tokens == 6
    with pytest.raises(HarvestError, match="no harvest in"):
        status(tmp_path / "nowhere")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    store = HarvestStore(tmp_path, "run")
    with pytest.raises(HarvestError, match="another harvest is writing"):
        HarvestStore(tmp_path, "run")
    store.close()
    HarvestStore(tmp_path, "run").close()


def test_a_teacher_whose_weights_changed_is_refused(tmp_path: Path) -> None:
    store = HarvestStore(tmp_path, "run")
    store.register_teacher(INFO, PARAMS)
    store.write("qwen-tiny", rows(2))
    rebuilt = TeacherInfo("qwen-tiny", "zoo/qwen-tiny", "sha256:ffffffffffffffff", "Apache-2.0")
    with pytest.raises(HarvestError, match=r"sha256:0123456789abcdef.*now at sha256:ffff"):
        store.register_teacher(rebuilt, PARAMS)
    store.close()
