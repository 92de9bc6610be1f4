"""The shipped example sources (examples/data/) and recipes/own-data.yaml.

The committed files are what ``avocado data example`` writes (same bytes for JSONL and CSV, the
same rows for Parquet and the ``datasets`` directory); the recipe over them passes ``recipe
check`` and ``data check`` through the real command; every reference is the tiny world's own
answer.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk

from avocado_llm.data.examples import FILES
from avocado_llm.data.verifiers import verifier
from avocado_llm.world.lore import COUNTRIES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "examples" / "data"
RECIPE = ROOT / "recipes" / "own-data.yaml"


def avocado(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "avocado_llm.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def rows_of(directory: Path) -> dict[str, Any]:
    with (directory / FILES[1]).open(encoding="utf-8", newline="") as f:
        math = list(csv.DictReader(f))
    return {
        "jsonl": (directory / FILES[0]).read_bytes(),
        "csv": (directory / FILES[1]).read_bytes(),
        "csv_rows": math,
        "parquet": pq.read_table(directory / FILES[2]).to_pylist(),
        "datasets": load_from_disk(str(directory / FILES[3])).to_list(),
    }


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples") / "data"
    done = avocado("data", "example", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [str(out / name) for name in FILES]
    return out


def test_regenerating_gives_the_committed_files(regenerated: Path) -> None:
    shipped, again = rows_of(SHIPPED), rows_of(regenerated)
    for kind in shipped:
        assert again[kind] == shipped[kind], f"examples/data {kind} differs from what is generated"
    assert len(shipped["parquet"]) == 2400 and len(shipped["datasets"]) == 300
    assert len(shipped["csv_rows"]) > 2 * 2400  # three skills (units has fewer distinct prompts)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 1_000_000, f"examples/data is {size:,} bytes"


def test_references_are_the_tiny_worlds_answers() -> None:
    rows = rows_of(SHIPPED)
    number, sequence, exact = verifier("number"), verifier("sequence"), verifier("exact")
    assert number and sequence and exact
    facts = {c: (capital, ruler) for c, capital, ruler in COUNTRIES}
    chats = [json.loads(line) for line in rows["jsonl"].decode().splitlines()]
    assert len(chats) == 2400  # every question the world can ask, in three chat shapes
    shapes, asked = set(), {}
    for chat in chats:
        roles = tuple(m["role"] for m in chat["messages"])
        shapes.add(roles)
        question = chat["messages"][-1]["content"]
        asked.setdefault(question, set()).add(roles)
        country = next(c for c in facts if c in question)
        assert chat["answer"] in facts[country]
    assert len(asked) > 780 and all(len(s) >= 3 for s in asked.values())  # a few texts twice
    assert shapes == {
        ("user",),
        ("system", "user"),
        ("user", "assistant", "user"),
        ("system", "user", "assistant", "user"),
    }
    for row in rows["csv_rows"]:
        question, answer = row["question"], row["answer"]
        if row["kind"] == "arithmetic":
            a, b = (int(t) for t in re.findall(r"\d+", question))
            assert number(str(a + b), answer) == 1.0
        assert number(f"The answer is {answer}.", answer) == 1.0
        assert number(str(int(answer) + 1), answer) == 0.0
    for row in rows["parquet"]:
        items = row["prompt"].split(":", 1)[-1].split()
        expected = sorted(items) if row["task"] == "sorting" else items[::-1]
        assert sequence(" ".join(expected), row["answer"]) == 1.0
    assert {row["task"] for row in rows["parquet"]} == {"sorting", "reverse"}
    assert {row["kind"] for row in rows["csv_rows"]} == {"arithmetic", "counting", "units"}


def test_the_recipe_passes_recipe_check_and_data_check() -> None:
    done = avocado("recipe", "check", str(RECIPE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data sources support, quick-math, lists, open" in done.stdout
    done = avocado("data", "check", str(RECIPE), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    sources = json.loads(done.stdout)["sources"]
    assert list(sources) == ["support", "quick-math", "lists", "open"]
    for name, report in sources.items():
        assert report["train"] > 0 and report["heldout"] > 0, name
        assert report["errors"] == [] and report["skipped"] == 0, name
        kept = report["train"] + report["heldout"] + report["duplicates"] + report["contaminated"]
        assert kept == report["rows"], name


def test_bad_rows_argument_is_refused(tmp_path: Path) -> None:
    done = avocado("data", "example", "--out", str(tmp_path / "x"), "--rows", "2")
    assert done.returncode == 1
    assert "rows must be at least 3" in done.stdout
    assert not (tmp_path / "x").exists()
