"""The harvest directory: Parquet shards of records, a manifest that indexes them, a failure log.

Layout of ``runs/<name>/harvest/``::

    data/<teacher>/part-<seq>-<uuid>.parquet   records, at most ``shard_size`` rows each
    manifest.json                              shards (rows, bytes, sha256), teachers, recipe
    failures.jsonl                             one line per record that failed: key, reason, time
    damaged/<teacher>/part-….parquet           shards found damaged, moved out of the way

The shards are the truth. Each is written whole to a temporary file in its own directory,
fsynced and renamed into place, so it either exists complete or not at all. The manifest is an
index rebuilt from the shards whenever a store is opened, so a crash between a shard and the
manifest loses nothing (a shard of a ``data.sources`` harvest carries the sources' content
hashes in its Parquet metadata, so a rebuilt manifest still knows them). Opening a store for
writing also checks every shard (its SHA-256 against the manifest, its Parquet page
checksums): a damaged one (a bad disk, a bad copy) is reported by name, moved to
``damaged/``, and its records are harvested again.
``datasets.load_dataset("parquet", data_files=".../data/**/*.parquet")``
reads the records as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from avocado_llm.harvest.files import (
    RunDirError,
    acquire_lock,
    append_bytes,
    atomic_write,
    release_lock,
)
from avocado_llm.harvest.files import fsync_dir as _fsync_dir
from avocado_llm.models.files import file_sha256
from avocado_llm.teachers.base import SamplingParams, TeacherInfo

FORMAT = 1
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("gold", pa.string()),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("teacher_model", pa.string(), nullable=False),
        pa.field("teacher_revision", pa.string(), nullable=False),
        pa.field("licence", pa.string(), nullable=False),
        pa.field("sampling", pa.string(), nullable=False),  # JSON of SamplingParams
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("reasoning", pa.string()),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("token_logprobs", pa.list_(pa.float32())),
        pa.field("top_ids", pa.list_(pa.list_(pa.int32()))),  # (T, k)
        pa.field("top_tokens", pa.list_(pa.list_(pa.string()))),  # (T, k)
        pa.field("top_logprobs", pa.list_(pa.list_(pa.float32()))),  # (T, k)
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),
        pa.field("latency_s", pa.float32(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"avocado.harvest.format": str(FORMAT)},
)
"""One row per teacher answer; see "Contracts between stages" in DESIGN.md."""
INDEX_COLUMNS = [
    "key",
    "prompt_id",
    "teacher_model",
    "teacher_revision",
    "finish_reason",
    "completion_tokens",
]
"""What opening a store reads of every shard: enough to resume and to report status."""
SOURCES_KEY = b"avocado.harvest.sources"
"""Parquet metadata of a shard written for ``data.sources``: JSON of source name → digest."""
SHARD_NAME = re.compile(r"part-(\d+)-[0-9a-f]+\.parquet")
DAMAGED = "damaged"
"""Where shards found damaged are moved (beside ``data/``, so readers no longer see them)."""

log = logging.getLogger("avocado.harvest")


class HarvestError(RuntimeError):
    """The harvest directory cannot be used as asked; the message says why and what to do."""


@dataclass
class Shard:
    path: str
    """Relative to the harvest directory."""
    teacher: str
    rows: int
    bytes: int
    sha256: str


class ShardIndex:
    """Per teacher: finished keys and what status reports, built from the shards' light columns."""

    def __init__(self) -> None:
        self.keys: dict[str, set[str]] = {}
        self.prompts: dict[str, set[str]] = {}
        self.provenance: dict[str, dict[str, str]] = {}
        self.reasons: dict[str, Counter[str]] = {}
        self.tokens: Counter[str] = Counter()
        self.sources: dict[str, str] = {}
        """Source name → content digest, as the shards' metadata recorded it (the first wins)."""

    def add_sources(self, metadata: dict[bytes, bytes] | None) -> None:
        """Take the source digests a shard's Parquet metadata carries (if any)."""
        raw = (metadata or {}).get(SOURCES_KEY)
        try:
            found = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            found = {}
        if isinstance(found, dict):
            for name, digest in found.items():
                if isinstance(name, str) and isinstance(digest, str):
                    self.sources.setdefault(name, digest)

    def add(self, teacher: str, table: pa.Table | list[dict[str, Any]]) -> None:
        rows = table.to_pylist() if isinstance(table, pa.Table) else table
        keys = self.keys.setdefault(teacher, set())
        for row in rows:
            if row["key"] in keys:
                continue
            keys.add(row["key"])
            self.prompts.setdefault(teacher, set()).add(row["prompt_id"])
            self.reasons.setdefault(teacher, Counter())[row["finish_reason"]] += 1
            self.tokens[teacher] += row["completion_tokens"]
            self.provenance.setdefault(teacher, {})[row["teacher_revision"]] = row["teacher_model"]


def shard_files(root: Path) -> list[Path]:
    return sorted((root / "data").glob("*/part-*.parquet"))


def scan_shards(root: Path, known: dict[str, Shard]) -> tuple[list[Shard], ShardIndex]:
    """Shards and index from the files; hashes are reused for files the manifest already has."""
    shards, index = [], ShardIndex()
    for file in shard_files(root):
        rel, teacher = file.relative_to(root).as_posix(), file.parent.name
        try:
            table = pq.read_table(file, columns=INDEX_COLUMNS)
        except (OSError, pa.ArrowException) as error:
            raise HarvestError(
                f"cannot read shard {file}: {error}. Shards are written atomically, so this file "
                "was damaged afterwards; move it away and rerun to harvest its records again"
            ) from error
        size = file.stat().st_size
        old = known.get(rel)
        digest = old.sha256 if old is not None and old.bytes == size else file_sha256(file)
        shards.append(Shard(rel, teacher, table.num_rows, size, digest))
        index.add(teacher, table)
        index.add_sources(table.schema.metadata)
    return shards, index


def shard_damage(file: Path, known: Shard | None) -> str | None:
    """Why the shard ``file`` is damaged, or None: its bytes differ from what the manifest
    recorded when it was written, or Parquet cannot read it back (footer, page checksums)."""
    if known is not None:
        size = file.stat().st_size
        if size != known.bytes:
            return f"it has {size} bytes, the manifest recorded {known.bytes}"
        if file_sha256(file) != known.sha256:
            return "its SHA-256 differs from the one the manifest recorded"
    try:
        pq.read_table(file, schema=SCHEMA, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as error:
        return f"Parquet cannot read it ({error})"
    return None


def quarantine_damaged(root: Path, known: dict[str, Shard]) -> list[str]:
    """Move every damaged shard to ``damaged/<teacher>/``, warning with its name; returns the
    shards' paths (relative to ``root``). Their records are then missing, so harvested again."""
    moved = []
    for file in shard_files(root):
        rel = file.relative_to(root).as_posix()
        reason = shard_damage(file, known.get(rel))
        if reason is None:
            continue
        target = root / DAMAGED / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)
        _fsync_dir(file.parent)
        log.warning(
            "damaged shard %s: %s; moved to %s, its records will be harvested again",
            rel, reason, target.relative_to(root).as_posix(),
        )  # fmt: skip
        moved.append(rel)
    return moved


INT32_MAX = 2**31 - 1


def row_problem(row: dict[str, Any]) -> str | None:
    """What makes ``row`` unfit for the store, or None: token counts must be whole numbers in
    [0, 2^31 - 1] (a negative usage is a lying teacher, not a count), latency finite and >= 0."""
    for name in ("prompt_tokens", "completion_tokens"):
        value = row.get(name)
        if type(value) is not int or not 0 <= value <= INT32_MAX:
            return f"{name} is {value!r}; expected a whole number from 0 to {INT32_MAX}"
    latency = row.get("latency_s")
    if not isinstance(latency, int | float) or not 0 <= latency < float("inf"):
        return f"latency_s is {latency!r}; expected a finite number >= 0"
    return None


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}  # the manifest is rebuilt from the shards


class HarvestStore:
    """A harvest directory opened for writing by this process alone (it holds a lock)."""

    def __init__(self, root: Path, recipe: str, shard_size: int = 512) -> None:
        self.root, self.recipe, self.shard_size = Path(root), recipe, shard_size
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        busy = f"another harvest is writing to {self.root}; wait for it to finish or stop it"
        try:
            self._lock = acquire_lock(self.root / ".lock", busy)
        except RunDirError as error:
            raise HarvestError(str(error)) from None
        for tmp in [*self.root.glob(".*.tmp"), *(self.root / "data").glob("*/.*.tmp")]:
            tmp.unlink()  # left by a crash mid-write; the rename never happened
        self._repair_failure_log()
        manifest = read_manifest(self.root)
        known = {s["path"]: Shard(**s) for s in manifest.get("shards", [])}
        self.teachers: dict[str, dict[str, Any]] = manifest.get("teachers", {})
        self.damaged = quarantine_damaged(self.root, known)
        """Shards found damaged when this store was opened (moved to ``damaged/``)."""
        self.shards, self.index = scan_shards(self.root, known)
        self.sources: dict[str, str] = {**self.index.sources, **(manifest.get("sources") or {})}
        """Source name → content digest of the prompt data harvested here (``data.sources``):
        the manifest's, else what the shards recorded (a lost manifest loses none)."""
        self._write_manifest()

    def close(self) -> None:
        release_lock(self._lock)

    def finished(self, teacher: str) -> set[str]:
        """Keys of the records this teacher already has (a live set, updated by :meth:`write`)."""
        return self.index.keys.setdefault(teacher, set())

    def register_teacher(self, info: TeacherInfo, params: SamplingParams) -> None:
        """Record a teacher's provenance; refuse a teacher whose weights changed since."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", info.name) or set(info.name) == {"."}:
            raise HarvestError(f"bad teacher name {info.name!r}: use letters, digits, _ . -")
        revisions = set(self.index.provenance.get(info.name, {})) - {info.revision}
        if revisions:
            raise HarvestError(
                f"{self.root / 'data' / info.name} holds answers of {info.name!r} at revision "
                f"{', '.join(sorted(revisions))}, but it is now at {info.revision}; harvest into "
                f"another directory (--out), or delete that folder to harvest {info.name} again"
            )
        self.teachers[info.name] = {**asdict(info), "sampling": params.as_dict()}
        self._write_manifest()

    def register_sources(self, digests: dict[str, str]) -> None:
        """Record each source's content digest; refuse (nothing recorded) a source whose content
        changed since it was harvested here: its old answers and new prompts must not mix."""
        changed = [
            f"{name}: {self.sources[name]} → {digest}"
            for name, digest in sorted(digests.items())
            if self.sources.get(name, digest) != digest
        ]
        if changed:
            raise HarvestError(
                f"the prompt source(s) changed since they were harvested into {self.root} "
                f"(content hash in its manifest.json): {'; '.join(changed)}. Resuming would mix "
                "answers to two versions of a source: restore the source file, harvest into "
                "another directory (--out), or delete this harvest directory to start over"
            )
        self.sources.update(digests)
        self._write_manifest()

    def write(self, teacher: str, rows: list[dict[str, Any]]) -> int:
        """Append the rows whose keys are new, in shards of at most ``shard_size``; the count.

        Refuses (:class:`HarvestError`, nothing written) a batch with a row that breaks the
        record contract (see :func:`row_problem`): the parser should have caught it."""
        for row in rows:
            if problem := row_problem(row):
                raise HarvestError(f"refusing record {row.get('key')!r} of {teacher}: {problem}")
        done, fresh, seen = self.finished(teacher), [], set()
        for row in rows:
            if row["key"] not in done and row["key"] not in seen:
                seen.add(row["key"])
                fresh.append(row)
        for start in range(0, len(fresh), self.shard_size):
            self._write_shard(teacher, fresh[start : start + self.shard_size])
        if fresh:
            self._write_manifest()
        return len(fresh)

    def _write_shard(self, teacher: str, rows: list[dict[str, Any]]) -> None:
        folder = self.root / "data" / teacher
        folder.mkdir(exist_ok=True)
        seqs = [int(m[1]) for p in folder.iterdir() if (m := SHARD_NAME.fullmatch(p.name))]
        path = folder / f"part-{max(seqs, default=-1) + 1:06d}-{uuid.uuid4().hex[:8]}.parquet"
        buffer = pa.BufferOutputStream()
        schema = SCHEMA
        if self.sources:  # so that a manifest rebuilt from the shards still knows them
            sources = json.dumps(dict(sorted(self.sources.items()))).encode()
            schema = SCHEMA.with_metadata({**(SCHEMA.metadata or {}), SOURCES_KEY: sources})
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, buffer, compression="zstd", write_page_checksum=True)
        data = buffer.getvalue().to_pybytes()
        atomic_write(path, data)
        rel = path.relative_to(self.root).as_posix()
        self.shards.append(
            Shard(rel, teacher, len(rows), len(data), hashlib.sha256(data).hexdigest())
        )
        self.index.add(teacher, rows)

    def record_failures(self, teacher: str, items: list[tuple[str, str, int]], reason: str) -> None:
        """Log ``(key, prompt_id, sample_index)`` items as failed, durably (fsync)."""
        now = datetime.now(UTC).isoformat()
        lines = "".join(
            json.dumps({"key": key, "prompt_id": prompt_id, "teacher": teacher,
                        "sample_index": index, "reason": reason, "time": now}) + "\n"
            for key, prompt_id, index in items
        )  # fmt: skip
        append_bytes(self.root / "failures.jsonl", lines.encode(), sync=True)

    def _repair_failure_log(self) -> None:
        """Cut a last line left unfinished by a crash, so the next append starts a fresh line."""
        path = self.root / "failures.jsonl"
        if path.exists() and (data := path.read_bytes()) and not data.endswith(b"\n"):
            atomic_write(path, data[: data.rfind(b"\n") + 1])

    def _write_manifest(self) -> None:
        teachers = {}
        for name in sorted(set(self.teachers) | set(self.index.keys)):
            entry = dict(self.teachers.get(name, {}))
            if revisions := self.index.provenance.get(name):
                entry["revisions"] = sorted(revisions)
            entry["records"] = len(self.index.keys.get(name, ()))
            entry["prompts"] = len(self.index.prompts.get(name, ()))
            teachers[name] = entry
        manifest = {
            "format": FORMAT,
            "recipe": self.recipe,
            "updated_at": datetime.now(UTC).isoformat(),
            "records": sum(s.rows for s in self.shards),
            "teachers": teachers,
            "shards": [asdict(s) for s in self.shards],
        }
        if self.sources:  # only a harvest of data.sources has them
            manifest["sources"] = dict(sorted(self.sources.items()))
        atomic_write(self.root / "manifest.json", json.dumps(manifest, indent=1).encode())
