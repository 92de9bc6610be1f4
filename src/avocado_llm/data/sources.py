"""Reading prompt sources as streams of records, whatever their format.

A source is a ``.jsonl`` / ``.json`` file, a ``.parquet`` file, a ``.csv`` / ``.tsv`` file, or a
directory written by ``datasets`` (``save_to_disk``, one dataset or a ``DatasetDict``, whose
splits are read one after the other: Avocado makes its own). :func:`open_source` gives a
:class:`Reader`: its columns (where the format has a header or a schema) and its records, one
at a time, each with where it came from (``file line N`` / ``file row N``) and either its values
or what is wrong with it (malformed JSON, non-UTF-8 bytes). Nothing holds more than one batch
of rows in memory. :func:`source_digest` is the sha256 of a source's bytes, streamed.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 4096  # rows per Arrow batch: bounds the memory of a columnar read
CHUNK_BYTES = 1 << 20  # bytes per read of a JSON array file and of the digest


class DataError(ValueError):
    """A prompt source that cannot be used as the recipe says (a missing column, bad rows
    under ``on_error: fail``, an unreadable file); the message says where and what to do."""


@dataclass(frozen=True)
class Record:
    """One row of a source, as read."""

    where: str
    """Its place, for messages: ``support.jsonl line 3`` or ``train.parquet row 17``."""
    values: dict[str, Any] | None
    """Its columns, or ``None`` when it could not be read (``problem`` says why)."""
    problem: str | None = None
    """Why it could not be read, e.g. ``malformed JSON (Expecting value: column 1)``."""
    reason: str = ""
    """The kind of problem, for counts: ``malformed JSON``, ``non-UTF-8 bytes``, ..."""


@dataclass
class Reader:
    """A source, opened: its columns (``None`` for JSON, where each row has its own keys)
    and :meth:`records`, which streams them (each call starts from the beginning)."""

    path: Path
    columns: list[str] | None
    kind: str

    def records(self, wanted: list[str] | None = None) -> Iterator[Record]:
        """Every row; ``wanted`` columns only, where the format can read fewer. A file that
        breaks midway (a damaged Parquet page, a read error) raises DataError."""
        try:
            yield from self._records(wanted)
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"{self.path}: cannot read it: {error}") from error

    def _records(self, wanted: list[str] | None) -> Iterator[Record]:
        if self.kind == "jsonl":
            return _jsonl_records(self.path)
        if self.kind == "json":
            return _json_array_records(self.path)
        if self.kind == "csv":
            return _csv_records(self.path, "\t" if self.path.suffix.lower() == ".tsv" else ",")
        if self.kind == "parquet":
            return _parquet_records(self.path, wanted)
        return _arrow_dir_records(self.path, wanted)


def open_source(path: Path) -> Reader:
    """The source at ``path`` (a file by its suffix, or a ``datasets`` directory)."""
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            files = _arrow_files(path)
            schema = _arrow_schema(files[0]) if files else None
            return Reader(path, schema.names if schema else [], "datasets")
        if suffix == ".jsonl":
            return Reader(path, None, "jsonl")
        if suffix == ".json":
            return Reader(path, None, "json" if _starts_with_bracket(path) else "jsonl")
        if suffix in (".csv", ".tsv"):
            return Reader(path, _csv_header(path, "\t" if suffix == ".tsv" else ","), "csv")
        if suffix == ".parquet":
            return Reader(path, list(pq.ParquetFile(path).schema_arrow.names), "parquet")
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot read it: {error}") from error
    raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl, .json, .parquet, .csv, .tsv")


def missing_column(name: str, columns: list[str], where: str | None = None) -> str:
    """The message for a column the recipe names that the source (or a row, ``where`` unset)
    lacks: the columns there and the nearest one."""
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(columns) if columns else "(none)"
    prefix = f"{where}: " if where else ""
    return f"{prefix}no column {name!r} (columns there: {listed}){hint}"


def source_digest(path: Path) -> str:
    """``sha256:`` of the source's bytes (a directory: of its files' relative paths and bytes,
    in sorted order), read in chunks; a source edited between two runs gets another digest."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


# --- JSON -------------------------------------------------------------------------------------


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _row(where: str, value: Any) -> Record:
    if isinstance(value, dict):
        return Record(where, value)
    return Record(
        where, None, f"expected a JSON object, got {type(value).__name__}", "not an object"
    )


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path.name} line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield Record(
                    where, None, f"non-UTF-8 bytes at byte {error.start}", "non-UTF-8 bytes"
                )
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                problem = f"malformed JSON ({error.msg}: column {error.colno})"
                yield Record(where, None, problem, "malformed JSON")
                continue
            yield _row(where, value)


def _json_array_records(path: Path) -> Iterator[Record]:
    """The objects of a ``[...]`` file, decoded one at a time from a growing buffer."""
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        buffer, pos, eof, number = "", 0, False, 0

        def more() -> bool:
            nonlocal buffer, pos, eof
            chunk = f.read(CHUNK_BYTES)
            try:
                text = utf8.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                raise DataError(f"{path.name}: non-UTF-8 bytes ({error.reason})") from error
            buffer, pos, eof = buffer[pos:] + text, 0, not chunk
            return bool(chunk)

        def skip(chars: str) -> str:
            nonlocal pos
            while True:
                while pos < len(buffer) and buffer[pos] in chars:
                    pos += 1
                if pos < len(buffer) or not more():
                    return buffer[pos] if pos < len(buffer) else ""

        if skip("\ufeff \t\r\n") != "[":
            raise DataError(f"{path.name}: expected a JSON array")
        pos += 1
        while (c := skip(" \t\r\n,")) and c != "]":
            number += 1
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, pos)
                    break
                except json.JSONDecodeError as error:
                    if eof or not more():
                        raise DataError(
                            f"{path.name} element {number}: malformed JSON ({error.msg}); a "
                            "JSON array cannot be read past it (JSON Lines can)"
                        ) from error
            pos = end
            yield _row(f"{path.name} element {number}", value)
        if c != "]":
            raise DataError(f"{path.name}: the JSON array is not closed with ']'")


# --- CSV --------------------------------------------------------------------------------------


def _csv_open(path: Path) -> Any:
    # surrogateescape keeps a bad byte in the text, so only the rows holding one are refused
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with _csv_open(path) as f:
        return next(csv.reader(f, delimiter=delimiter), [])


def _csv_records(path: Path, delimiter: str) -> Iterator[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _csv_open(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, [])
        except csv.Error as error:
            raise DataError(f"{path.name} line 1: bad CSV header ({error})") from error
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:  # e.g. a NUL byte; the reader goes on at the next line
                yield Record(f"{path.name} line {reader.line_num}", None, str(error), "bad CSV")
                continue
            where = f"{path.name} line {reader.line_num}"
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                problem = f"{len(fields)} fields where the header has {len(header)}"
                yield Record(where, None, problem, "wrong number of fields")
                continue
            yield Record(where, dict(zip(header, fields, strict=True)))


# --- Arrow (Parquet and datasets directories) -------------------------------------------------


def _batches_records(name: str, batches: Iterator[pa.RecordBatch], start: int) -> Iterator[Record]:
    number = start
    for batch in batches:
        for values in batch.to_pylist():
            number += 1
            yield Record(f"{name} row {number}", values)


def _parquet_records(path: Path, wanted: list[str] | None) -> Iterator[Record]:
    file = pq.ParquetFile(path)
    columns = [c for c in wanted if c in file.schema_arrow.names] if wanted else None
    yield from _batches_records(path.name, file.iter_batches(BATCH_ROWS, columns=columns), 0)


def _arrow_files(path: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory, in order (every split of a
    ``DatasetDict``)."""
    index = path / "dataset_dict.json"
    state = path / "state.json"
    if not index.is_file() and not state.is_file():
        raise DataError(
            f"{path}: not a directory saved by datasets (no state.json or dataset_dict.json); "
            "save it with Dataset.save_to_disk, or point path at a file"
        )
    try:
        if index.is_file():
            splits = json.loads(index.read_text(encoding="utf-8"))["splits"]
            return [f for split in splits for f in _arrow_files(path / split)]
        files = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        return [path / f["filename"] for f in files]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: a damaged datasets directory ({error!r})") from error


def _arrow_schema(file: Path) -> pa.Schema:
    with pa.memory_map(str(file)) as source:
        return pa.ipc.open_stream(source).schema


def _arrow_dir_records(path: Path, wanted: list[str] | None) -> Iterator[Record]:
    number = 0
    for file in _arrow_files(path):
        with pa.memory_map(str(file)) as source:
            stream = pa.ipc.open_stream(source)
            keep = [c for c in wanted if c in stream.schema.names] if wanted else None

            def batches(s: Any = stream, keep: list[str] | None = keep) -> Iterator[Any]:
                for batch in s:
                    yield batch.select(keep) if keep else batch

            for record in _batches_records(
                f"{path.name}/{file.relative_to(path).as_posix()}", batches(), number
            ):
                number += 1
                yield record
