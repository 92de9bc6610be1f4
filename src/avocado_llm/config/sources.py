"""The recipe's ``data`` section: your own prompt sources (files or `datasets` directories),
their columns, verifiers and splits. Pure data, checked where it is declared; the readers are in
:mod:`avocado_llm.data`."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avocado_llm.config.fields import Check, check_range, did_you_mean

VERIFIERS = ("exact", "short", "number", "sequence", "choice", "math", "none")
"""Per-source verifiers by name; ``regex:<pattern>`` accepts an answer the pattern matches."""
SOURCE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
"""File formats of a prompt source; a directory saved by ``datasets`` (save_to_disk) also works."""


def verifier_problems(spec: str, where: str) -> list[Check]:
    """A problem unless ``spec`` is a known verifier name or ``regex:`` + a valid pattern."""
    if spec.startswith("regex:"):
        if not spec.removeprefix("regex:"):
            return [(where, "regex: needs a pattern after the colon", "e.g. regex:^[0-9]+$")]
        try:
            re.compile(spec.removeprefix("regex:"))
        except re.error as error:
            fix = "write a Python regular expression after regex:, e.g. regex:^[0-9]+$"
            return [(where, f"bad pattern in {spec!r}: {error}", fix)]
        return []
    if spec in VERIFIERS:
        return []
    fix = did_you_mean(spec, list(VERIFIERS)) or (
        f"use one of {', '.join(VERIFIERS)}, or regex:<pattern>"
    )
    return [(where, f"unknown verifier {spec!r}", fix)]


@dataclass(kw_only=True)
class SourceConfig:
    """One prompt dataset: a file or a ``datasets`` directory, read as a stream of prompts."""

    name: str
    """Unique name of the source (letters, digits, `_.-`); names it in records, fusion stats
    and reports, so it must differ from every tiny-world family in `world.families`."""
    path: Path
    """A .jsonl/.json, .parquet, .csv or .tsv file, or a directory saved by `datasets`
    (save_to_disk); relative to the recipe's directory."""
    messages: str | None = None
    """Column holding a chat: a list of {role, content}. A trailing assistant turn is not part
    of the prompt (it is the reference when `reference` is unset). Set this or `prompt`."""
    prompt: str | None = None
    """Column holding a single user prompt (text). Set this or `messages`."""
    system: str | None = None
    """A column of that name holding each row's system prompt, if the source has such a column
    (JSON sources: if their first row has that key); otherwise this text itself, as the system
    prompt of every row. A chat that starts with its own system turn keeps it."""
    reference: str | None = None
    """Column holding a reference answer (optional; most prompts have none)."""
    id: str | None = None
    """Column holding each row's own id (optional); two rows with the same id are a bad
    input. Avocado's prompt id is a hash of the normalized prompt either way."""
    verifier: str = "none"
    """How an answer is checked against the reference: exact, short (a short answer, alone,
    ending a sentence, or opening one that restates the question), number (the last number,
    past the numbers the question states), sequence, choice, regex:<pattern>, math, or none
    (open-ended: label-free fusion and judged evaluation)."""
    heldout_fraction: float = 0.2
    """Share of prompts held out for evaluation, chosen by a hash of the normalized prompt:
    stable across runs and row orders, and never overlapping the training split."""
    split_by: str | None = None
    """A column whose value groups rows (a conversation, a document, a question asked in
    several ways): the split hashes that value instead of the prompt, so all rows of a group
    fall on the same side and heldout_fraction is a share of groups (null: each prompt alone).
    A row with an empty value is a bad row."""
    limit: int | None = None
    """Read at most this many rows of the source (null: all)."""
    on_error: Literal["fail", "skip"] = "fail"
    """What a bad row does (malformed JSON, non-UTF-8 bytes, empty prompt, a prompt over
    max_prompt_tokens, a duplicate id): fail stops with the first ten problems; skip counts
    them and goes on."""
    max_prompt_tokens: int | None = None
    """Refuse prompts longer than the teachers' context, in tokens, by a cheap character bound:
    a prompt over 8 characters per token (twice what tokenizers average on English text) is
    refused; the harvest counts tokens exactly (null: no limit)."""

    def check(self) -> list[Check]:
        problems: list[Check] = []
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            fix = "use letters, digits, _ . -"
            problems.append(("name", f"bad source name {self.name!r}", fix))
        if (self.messages is None) == (self.prompt is None):
            message = "both messages and prompt are set" if self.messages else "no prompt column"
            fix = "set exactly one: messages (a chat column) or prompt (a text column)"
            problems.append(("prompt" if self.prompt else "messages", message, fix))
        problems += verifier_problems(self.verifier, "verifier")
        problems += check_range(self, "heldout_fraction", 0, 1, high_open=True)
        if self.limit is not None:
            problems += check_range(self, "limit", 1)
        if self.max_prompt_tokens is not None:
            problems += check_range(self, "max_prompt_tokens", 1)
        if not isinstance(self.path, Path):  # missing or not a path: reported already
            return problems
        if not self.path.exists():
            fix = "fix the path (relative paths start at the recipe's directory)"
            problems.append(("path", f"no such file or directory: {self.path}", fix))
        elif self.path.is_file() and self.path.suffix.lower() not in SOURCE_SUFFIXES:
            fix = f"use a {', '.join(SOURCE_SUFFIXES)} file or a datasets directory"
            problems.append(("path", f"unknown format {self.path.suffix!r}", fix))
        return problems


@dataclass(kw_only=True)
class DataConfig:
    """Your own prompt datasets, beside (or instead of) the tiny world's task families."""

    sources: list[SourceConfig] = field(default_factory=list)
    """Prompt sources, each a file or `datasets` directory; `avocado data check` reads them."""

    def check(self) -> list[Check]:
        problems: list[Check] = []
        names = [s.name for s in self.sources]
        for i, name in enumerate(names):
            if name and name in names[:i]:
                fix = "give every source its own name"
                problems.append((f"sources[{i}].name", f"duplicate source name {name!r}", fix))
        return problems
