"""Fused examples on disk: ``<dir>/<strategy slug>.parquet`` and its ``.report.json``.

Both are written whole to a temporary file and renamed into place, so a reader sees the old
file or the new one, never half of one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from avocado_llm.fusion.example import FusedExample, FusionError, FusionReport
from avocado_llm.harvest.store import MESSAGE, atomic_write

TEACHER_WEIGHT = pa.struct(
    [("teacher", pa.string()), ("weight", pa.float64()), ("record_key", pa.string())]
)
SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("teachers", pa.list_(TEACHER_WEIGHT), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("support", pa.float64(), nullable=False),
    ]
)
"""One row per example; ``teachers`` holds its weights and record keys."""


def strategy_slug(strategy: str) -> str:
    """A file name for a strategy: ``single:qwen-tiny`` → ``single-qwen-tiny``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", strategy).strip("-.") or "fusion"


def fingerprint_path(path: Path) -> Path:
    """Where the fingerprint of the fused file ``path`` is kept."""
    return path.with_suffix(".fingerprint.json")


def read_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """What made the fused file ``path`` (``None``: unknown, so it must be fused again)."""
    try:
        data = json.loads(fingerprint_path(Path(path)).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_fused(
    directory: str | Path,
    strategy: str,
    examples: list[FusedExample],
    report: FusionReport,
    fingerprint: dict[str, Any] | None = None,
) -> Path:
    """Write the examples and the report, then ``fingerprint`` (what made them: recipe fields
    and input digests); the path of the Parquet file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = fingerprint_path(directory / f"{strategy_slug(strategy)}.parquet")
    stamp.unlink(missing_ok=True)  # until the new files are all written, nothing vouches for them
    rows = [
        {
            "prompt_id": ex.prompt_id,
            "family": ex.family,
            "messages": ex.messages,
            "target": ex.target,
            "teachers": [
                {"teacher": t, "weight": w, "record_key": ex.record_keys[t]}
                for t, w in ex.weights.items()
            ],
            "strategy": ex.strategy,
            "support": ex.support,
        }
        for ex in examples
    ]
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer, compression="zstd")
    path = directory / f"{strategy_slug(strategy)}.parquet"
    atomic_write(path, buffer.getvalue().to_pybytes())
    report_json = json.dumps(report.to_dict(), indent=1).encode()
    atomic_write(path.with_suffix(".report.json"), report_json)
    if fingerprint is not None:
        atomic_write(stamp, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
    return path


def read_fused(path: str | Path) -> list[FusedExample]:
    """The examples of a file written by :func:`write_fused`."""
    path = Path(path)
    if not path.is_file():
        raise FusionError(f"no fused examples at {path}; run `avocado fuse RECIPE` first")
    return [
        FusedExample(
            prompt_id=row["prompt_id"],
            family=row["family"],
            messages=row["messages"],
            target=row["target"],
            weights={t["teacher"]: t["weight"] for t in row["teachers"]},
            record_keys={t["teacher"]: t["record_key"] for t in row["teachers"]},
            strategy=row["strategy"],
            support=row["support"],
        )
        for row in pq.read_table(path, schema=SCHEMA).to_pylist()
    ]


def read_report(path: str | Path) -> FusionReport:
    """The report beside a file written by :func:`write_fused` (pass either path)."""
    path = Path(path)
    if path.suffix == ".parquet":
        path = path.with_suffix(".report.json")
    return FusionReport.from_dict(json.loads(path.read_text()))
