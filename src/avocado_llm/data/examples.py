"""The example prompt sources of ``recipes/own-data.yaml``: ``avocado data example``.

Four small datasets in the formats users bring, written deterministically (same bytes, or for
Parquet and ``datasets`` the same rows, on every run) from the tiny world's own generators, so
every reference is correct and the zoo teachers can answer the questions:

- ``support_chats.jsonl``: chats about the fictional world's capitals and rulers (the question,
  after a system prompt, an earlier question with its answer, both or neither); reference
  ``answer`` (``exact``);
- ``quick_math.csv``: single prompts (sums, counts, unit conversions); ``answer`` is a number
  (``number``);
- ``list_tasks.parquet``: sort digits or reverse words; ``answer`` lists the items, comma
  separated (``sequence``);
- ``open_prompts/``: a ``datasets`` directory (``save_to_disk``) of open-ended prompts with no
  reference (verifier ``none``: label-free fusion and judged evaluation).

``avocado data example --out DIR [--rows N]`` writes them; ``--rows`` scales the three verified
sources (the committed copy uses the default): a student learns a skill from a thousand or more
verified answers to it, so lists (two skills) get N rows and quick-math (three) 3 × N; support
asks each of the world's 800 questions in up to three chat shapes (N chats), and open has
every prompt of its kinds (300).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path
from typing import Any

from avocado_llm.world.lore import COUNTRIES
from avocado_llm.world.tasks import Example, get_family

DEFAULT_ROWS = 2400
"""Rows of support and lists; quick-math gets three times as many (three skills), the
open-ended source a third as many, at most its 300 prompts."""
SEED = 21

FILES = ("support_chats.jsonl", "quick_math.csv", "list_tasks.parquet", "open_prompts")

SYSTEM_PROMPTS = (
    "You are the help desk of the atlas. Answer with the name only.",
    "You answer questions about the kingdoms of the atlas. Be brief.",
    "Reply with one short answer and nothing else.",
)


def _examples(family: str, n: int, seed: int) -> list[Example]:
    """``n`` distinct questions of a family, from both of its splits (the source makes its own
    split), in a seeded order."""
    fam = get_family(family)
    heldout = max(1, round(n * fam.heldout_fraction))
    rows = fam.generate("train", n - heldout, seed) + fam.generate("heldout", heldout, seed)
    random.Random(f"{family}/{seed}").shuffle(rows)
    return rows


def chat_rows(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Chats about the fictional world: a question after a system prompt, an earlier turn, both
    or neither. The world can ask 800 questions (50 countries, two facts each, eight phrasings of
    each); past 800 chats each question comes back in another of the four shapes. ``question``
    names the question a chat asks (the recipe's ``split_by``: all chats of a question fall on
    one side of the split); a training chat that shows a held-out question with its answer as
    an earlier turn is still dropped (``avocado data check`` counts it as contaminated)."""
    rng = random.Random(f"chats/{seed}")
    questions = _examples("facts", min(n, 800), seed)
    rows = []
    for i in range(n):
        again, q = divmod(i, len(questions))
        question = questions[q]
        earlier = questions[(q + 1 + rng.randrange(len(questions) - 1)) % len(questions)]
        system = SYSTEM_PROMPTS[rng.randrange(len(SYSTEM_PROMPTS))]
        shape = (q + again) % 4
        messages = [{"role": "system", "content": system}] if shape % 2 else []
        if shape >= 2:
            messages += [
                {"role": "user", "content": earlier.prompt},
                {"role": "assistant", "content": earlier.answer},
            ]
        messages.append({"role": "user", "content": question.prompt})
        rows.append(
            {
                "ticket": f"T{10000 + i}",
                "messages": messages,
                "answer": question.answer,
                "question": question.id,
            }
        )
    return rows


def math_rows(n: int, seed: int = SEED) -> list[dict[str, str]]:
    """Single prompts whose answer is a number: sums, counts and unit conversions."""
    per = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    examples = [
        ex
        for family, k in zip(("arithmetic", "counting", "units"), per, strict=True)
        for ex in _examples(family, k, seed)
    ]
    random.Random(f"math/{seed}").shuffle(examples)
    return [{"question": ex.prompt, "answer": ex.answer, "kind": ex.family} for ex in examples]


def list_rows(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Prompts whose answer is a list: sorted digits, reversed words."""
    examples = _examples("sorting", n - n // 2, seed) + _examples("reverse", n // 2, seed)
    random.Random(f"lists/{seed}").shuffle(examples)
    return [
        {"prompt": ex.prompt, "answer": ", ".join(ex.answer.split()), "task": ex.family}
        for ex in examples
    ]


_OPEN = (
    "Tell me about {country}.",
    "Write one sentence about the ruler of {country}.",
    "What should a traveller know before visiting {capital}?",
    "Describe {capital} to a child.",
    "Why might {country} be hard to govern?",
    "Write a short greeting from {ruler} to the people of {country}.",
)


def open_rows(n: int, seed: int = SEED) -> list[dict[str, str]]:
    """Open-ended prompts about the fictional world: no reference, judged."""
    rng = random.Random(f"open/{seed}")
    pairs = [(c, t) for c in range(len(COUNTRIES)) for t in range(len(_OPEN))]
    rng.shuffle(pairs)
    rows = []
    for c, t in pairs[:n]:
        country, capital, ruler = COUNTRIES[c]
        text = _OPEN[t].format(country=country, capital=capital, ruler=ruler)
        rows.append({"prompt": text, "topic": country})
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_examples(out: Path, rows: int = DEFAULT_ROWS, seed: int = SEED) -> list[Path]:
    """Write the four example sources under ``out``; returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, disable_progress_bars

    if rows < 3:
        raise ValueError(f"rows must be at least 3, got {rows}")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(_jsonl(chat_rows(rows, seed)), encoding="utf-8")
    paths[1].write_text(_csv(math_rows(3 * rows, seed)), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(list_rows(rows, seed)), paths[2], compression="zstd")
    disable_progress_bars()
    Dataset.from_list(open_rows(max(1, rows // 3), seed)).save_to_disk(str(paths[3]))
    return paths


def add_example_command(data_cmds: Any) -> None:
    """Register ``data example`` on the ``avocado data`` subcommands."""
    p = data_cmds.add_parser(
        "example",
        help="write the example prompt sources of recipes/own-data.yaml",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("examples/data"), help="directory to write")
    p.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="rows of support and lists (quick-math: 3×)"
    )
    p.add_argument("--seed", type=int, default=SEED, help="seed of the generators")
    p.set_defaults(func=run_example)


def run_example(args: argparse.Namespace) -> int:
    try:
        paths = write_examples(args.out, args.rows, args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}")
        return 1
    for path in paths:
        print(path)
    return 0
