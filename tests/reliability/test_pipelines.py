"""Pipelines: a harvest killed with SIGKILL at random moments (5 times) and then finished has
exactly the records of an uninterrupted run, each once; a damaged Parquet shard is detected when
the harvest is resumed, reported by name, moved aside and its records harvested again.

The harvests are ``avocado harvest`` processes forked by ``zygote.py`` (the command's own
code, without importing torch at every start).

(tests/harvest/test_harvest_kill.py covers Ctrl-C plus 3 kills with two teachers, checking that
each record exists once; tests/distill/test_train.py covers training killed twice and resumed,
ending at the same loss and weights. These add the comparison with an uninterrupted run, more
kills, and damaged shards.)
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pyarrow as pa
import yaml
from rel_helpers import Zygote
from rel_load import record_figures

from avocado_llm.harvest import read_records

KILLS = 5
COMPARED = ["key", "prompt_id", "teacher", "sample_index", "completion", "finish_reason",
            "token_ids", "completion_tokens", "prompt_tokens"]  # fmt: skip
"""Every column but timings: what an uninterrupted run must have written too."""


def write_recipe(path: Path, out: Path, zoo: Path, prompts: int, batch: int) -> Path:
    data = {
        "name": "reliability",
        "output_dir": str(out),
        "world": {"families": ["arithmetic", "reverse"], "zoo_dir": str(zoo)},
        "teachers": [{"name": "qwen-tiny", "zoo": True, "licence": "test licence"}],
        "harvest": {
            "prompts_per_family": prompts,
            "max_new_tokens": 8,
            "top_logprobs": 3,
            "batch_size": batch,
            "shard_size": batch,
        },
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def harvest_argv(recipe: Path) -> list[str]:
    return ["harvest", str(recipe), "--device", "cpu"]


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("data/*/part-*.parquet"))


def records(out: Path) -> list[dict[str, object]]:
    table: pa.Table = read_records(out).select(COMPARED).sort_by("key")
    return table.to_pylist()  # type: ignore[no-any-return]


def assert_manifest_matches_files(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix(): p for p in shards(out)}
    assert sorted(s["path"] for s in manifest["shards"]) == sorted(files)
    for shard in manifest["shards"]:
        assert hashlib.sha256(files[shard["path"]].read_bytes()).hexdigest() == shard["sha256"]
    assert manifest["records"] == sum(s["rows"] for s in manifest["shards"])


def test_harvest_killed_5_times_ends_with_the_records_of_an_uninterrupted_run(
    tmp_path: Path, zoo_dir: Path, zygote: Zygote
) -> None:
    # 120 batches: enough that 5 kills, each up to ~0.3 s after a new shard, leave work to do
    # on a quiet machine too (with 40 batches the harvest sometimes finished before kill 3).
    prompts = 120
    straight = write_recipe(tmp_path / "straight.yaml", tmp_path / "straight", zoo_dir, prompts, 2)
    killed = write_recipe(tmp_path / "killed.yaml", tmp_path / "killed", zoo_dir, prompts, 2)
    done = zygote.run(harvest_argv(straight), tmp_path / "straight.log")
    assert done == 0, (tmp_path / "straight.log").read_text()[-2000:]
    expected = records(tmp_path / "straight" / "reliability" / "harvest")
    assert len(expected) == 2 * prompts

    out = tmp_path / "killed" / "reliability" / "harvest"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    partial = []
    for attempt in range(KILLS):
        log = tmp_path / f"killed-{attempt}.log"
        pid = zygote.spawn(harvest_argv(killed), {}, log)
        try:
            before, deadline = len(shards(out)), time.monotonic() + 120
            while len(shards(out)) <= before:  # started: a new shard since the last kill
                assert not Path(f"{log}.rc").exists(), f"seed {seed}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "no shard written in 120 s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # then a random moment, mid-batch or mid-write
        finally:
            zygote.kill(pid)
        assert not Path(f"{log}.rc").exists(), f"seed {seed}: it finished before kill {attempt}"
        partial.append(len(read_records(out)))
    final = zygote.run(harvest_argv(killed), tmp_path / "final.log")
    assert final == 0, (tmp_path / "final.log").read_text()[-2000:]

    got = records(out)
    assert partial[-1] < len(got), f"seed {seed}: nothing was left to do after the kills"
    assert [r["key"] for r in got] == [r["key"] for r in expected]  # each record once
    assert got == expected, f"seed {seed}: records differ from the uninterrupted run's"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == len(got), "a record written twice"
    assert_manifest_matches_files(out)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    record_figures("harvest-kills", {"seed": seed, "kills": KILLS, "records_after_each": partial,
                                     "records": len(got)})  # fmt: skip


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # same size, a few bytes in the middle changed: only the hash can tell
        middle = len(data) // 2
        for i in range(middle, middle + 8):
            data[i] ^= 0xFF
    else:  # cut short, as by a bad copy
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_reported_by_name_moved_aside_and_redone(
    tmp_path: Path, zoo_dir: Path, zygote: Zygote
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", tmp_path / "runs", zoo_dir, 6, 2)
    out = tmp_path / "runs" / "reliability" / "harvest"
    first = zygote.run(harvest_argv(recipe), tmp_path / "first.log")
    assert first == 0, (tmp_path / "first.log").read_text()[-2000:]
    expected = records(out)
    files = shards(out)
    assert len(expected) == 12 and len(files) == 6
    flipped, cut = files[1], files[4]
    damage(flipped, "flip")
    damage(cut, "cut")

    again = zygote.run(harvest_argv(recipe), tmp_path / "again.log")
    log = (tmp_path / "again.log").read_text()
    assert again == 0, log[-2000:]
    for bad, why in ((flipped, "SHA-256 differs"), (cut, "bytes, the manifest recorded")):
        rel = bad.relative_to(out).as_posix()
        line = next((x for x in log.splitlines() if f"damaged shard {rel}" in x), None)
        assert line is not None, f"{rel} not reported:\n{log[-2000:]}"
        assert why in line and "harvested again" in line, line
        assert (out / "damaged" / bad.parent.name / bad.name).exists()
        assert not bad.exists()
    assert records(out) == expected  # redone: the same records, each once
    assert len(shards(out)) == 6
    assert_manifest_matches_files(out)

    clean = zygote.run(harvest_argv(recipe), tmp_path / "clean.log")  # nothing damaged now
    assert clean == 0 and "damaged shard" not in (tmp_path / "clean.log").read_text()
