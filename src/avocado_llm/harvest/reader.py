"""Reading a harvest directory: every record once (``read_records``), and what it holds per
teacher (``status``). Readers take no lock and change nothing, so they work during a run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avocado_llm.harvest.store import (
    SCHEMA,
    HarvestError,
    Shard,
    read_manifest,
    scan_shards,
    shard_files,
)


@dataclass
class TeacherStatus:
    """What a harvest directory holds for one teacher."""

    records: int = 0
    prompts: int = 0
    failed: int = 0
    """Records that failed and have not been harvested since (the next run retries them)."""
    completion_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    revisions: list[str] = field(default_factory=list)


def _read_failures(root: Path) -> list[dict[str, Any]]:
    path = root / "failures.jsonl"
    if not path.exists():
        return []
    failures = []
    for line in path.read_text().splitlines():
        try:
            failures.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the record is simply retried
    return failures


def read_records(root: str | Path) -> pa.Table:
    """Every record of a harvest directory, once per key (the first shard's copy wins)."""
    files = shard_files(Path(root))
    if not files:
        return SCHEMA.empty_table()
    table = pa.concat_tables(pq.read_table(f, schema=SCHEMA) for f in files)
    if pc.count_distinct(table["key"]).as_py() == table.num_rows:
        return table
    rows = table.append_column("_row", pa.array(range(table.num_rows)))
    first = rows.group_by("key").aggregate([("_row", "min")])["_row_min"]
    return table.take(sorted(first.to_pylist()))


def status(root: str | Path) -> dict[str, TeacherStatus]:
    """Per teacher: records, prompts, pending failures, completion tokens, finish reasons."""
    root = Path(root)
    if not (root / "data").is_dir():
        raise HarvestError(f"no harvest in {root}; run `avocado harvest RECIPE` first")
    _, index = scan_shards(
        root, {s["path"]: Shard(**s) for s in read_manifest(root).get("shards", [])}
    )
    result = {
        name: TeacherStatus(
            records=len(keys),
            prompts=len(index.prompts.get(name, ())),
            completion_tokens=index.tokens[name],
            finish_reasons=dict(index.reasons.get(name, {})),
            revisions=sorted(index.provenance.get(name, {})),
        )
        for name, keys in index.keys.items()
    }
    pending: dict[str, set[str]] = {}
    for failure in _read_failures(root):
        if failure["key"] not in index.keys.get(failure["teacher"], set()):
            pending.setdefault(failure["teacher"], set()).add(failure["key"])
    for name, keys in pending.items():
        result.setdefault(name, TeacherStatus()).failed = len(keys)
    return dict(sorted(result.items()))
