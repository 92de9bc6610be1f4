"""Data at scale: ``avocado data check`` on a 1,000,000-row Parquet source, timed, with the
peak memory of the command.

Writes a Parquet file (in a temporary directory) of prompts a dozen to thirty words long, some
repeated (duplicates), some with a reference answer, and a recipe naming it as a source; then
runs ``avocado data check RECIPE --json`` as a subprocess (two streaming passes over the rows:
the held-out side's hashes, then splits, dedup and decontamination) and measures its wall time
and peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). The issue's bound on this
machine: at most 60 s and 1 GB. The last line is ``rows=… seconds=… peak_rss_mb=…``.

    .venv/bin/python bench/data_scale.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# fmt: off
WORDS = [
    "order", "delivery", "refund", "account", "password", "invoice", "shipping", "address",
    "payment", "card", "error", "login", "update", "cancel", "subscription", "plan", "price",
    "support", "ticket", "question", "answer", "number", "sum", "product", "return", "warranty",
    "store", "open", "close", "today", "tomorrow", "please", "help", "thanks", "why", "how", "what",
]
# fmt: on
BATCH = 100_000


def write_source(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` prompts in row groups of 100,000: half with a reference; about 1% repeat the
    row before in capitals (duplicates once normalized) and 1% quote it after a prefix (a
    training copy of a held-out prompt is contamination)."""
    rng = random.Random(seed)
    schema = pa.schema([("question", pa.string()), ("answer", pa.string())])
    previous = "Hello"
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, BATCH):
            questions, answers = [], []
            for i in range(start, min(rows, start + BATCH)):
                roll = rng.random()
                if roll < 0.01:
                    question = previous.upper()
                elif roll < 0.02:
                    question = "Same again: " + previous
                else:
                    question = f"Ticket {i}: " + " ".join(rng.choices(WORDS, k=12 + i % 19)) + "?"
                questions.append(question)
                answers.append(str(i) if i % 2 else None)
                previous = question
            writer.write_table(pa.table({"question": questions, "answer": answers}, schema))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "tickets.parquet"
        started = time.perf_counter()
        write_source(source, args.rows)
        size_mb = source.stat().st_size / 2**20
        print(
            f"wrote {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f}s"
        )
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(
            "name: scale\nteachers: [{name: q, zoo: true}]\nworld: {families: []}\n"
            "data:\n  sources:\n    - {name: tickets, path: tickets.parquet, prompt: question,"
            " reference: answer, verifier: number}\n"
        )
        command = [sys.executable, "-m", "avocado_llm.cli", "data", "check", str(recipe), "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"avocado data check failed ({done.returncode}):\n{done.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps(json.loads(done.stdout)["sources"]["tickets"]))
        verdict = "ok" if seconds <= 60 and peak_mb <= 1024 else "OVER the 60 s / 1 GB bound"
        print(f"{verdict}: {args.rows:,} rows checked in {seconds:.1f}s, peak {peak_mb:.0f} MB")
        print(f"rows={args.rows} seconds={seconds:.1f} peak_rss_mb={peak_mb:.0f}")


if __name__ == "__main__":
    main()
