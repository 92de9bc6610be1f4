"""lm-evaluation-harness tasks over a recipe's held-out split, as local files (no hub).

:func:`write_tasks` materializes, for every task family of the tiny world and every data source
with reference answers, the held-out prompts as JSONL and two task YAMLs that include the
shipped templates (``lm_eval_tasks/``):

- ``avocado_<name>`` — generation (``generate_until``): the model answers; the family's or the
  source's own verifier scores it (``acc``), as ``avocado eval`` does;
- ``avocado_<name>_mc`` — multiple choice (loglikelihood): the gold answer among up to three
  other held-out answers of the same family or source (``acc``, ``acc_norm``). A tiny-world
  answer is offered in both of the world's phrasings (``43`` and ``The answer is 43.``: each
  teacher, and so the student, answers some families one way and some the other), and either
  phrasing of the gold answer counts (lm-eval's multiple targets).

``avocado`` and ``avocado_mc`` name all of the generation and all of the multiple-choice tasks.
The directory works with lm-eval's own CLI too: ``lm_eval --include_path DIR --tasks ...``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avocado_llm.world import tasks as world

TEMPLATES = Path(__file__).with_name("lm_eval_tasks")
"""The shipped templates and the generation tasks' scorer."""
GENERATION, MULTIPLE_CHOICE = "avocado", "avocado_mc"
"""Names for all of the written generation / multiple-choice tasks."""
DISTRACTORS = 3
WORLD_STYLES = ("{}", "The answer is {}.")
"""How the tiny world's models phrase an answer (its corpus has both; ``zoo.build``'s
``answer_style``): bare, or in a sentence."""


@dataclass
class Row:
    """One held-out prompt: what both forms of the task read."""

    id: str
    prompt: str
    answer: str
    verifier: str
    """``family:<name>``, or a source's verifier spec."""
    styles: tuple[str, ...] = ("{}",)
    """How an answer is phrased as multiple-choice options (each one an option)."""


@dataclass
class TaskSet:
    """What :func:`write_tasks` wrote."""

    directory: Path
    generation: list[str] = field(default_factory=list)
    multiple_choice: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    """Held-out rows per task."""

    def expand(self, names: list[str]) -> list[str]:
        """``avocado`` and ``avocado_mc`` expanded; other names (lm-eval's own) kept."""
        out: list[str] = []
        for name in names:
            group = {GENERATION: self.generation, MULTIPLE_CHOICE: self.multiple_choice}.get(name)
            out += group if group is not None else [name]
        return list(dict.fromkeys(out))

    def output_type(self, task: str) -> str | None:
        """``generate_until`` / ``multiple_choice`` for a task written here, else None."""
        if task in self.generation:
            return "generate_until"
        return "multiple_choice" if task in self.multiple_choice else None


def task_name(name: str) -> str:
    return "avocado_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def world_rows(families: list[str], n: int, seed: int) -> dict[str, list[Row]]:
    """The held-out examples of each tiny-world family (the ones ``avocado eval`` scores)."""
    out: dict[str, list[Row]] = {}
    for family in families:
        examples = world.get_family(family).generate("heldout", n, seed)
        out[family] = [
            Row(ex.id, ex.prompt, ex.answer, f"family:{family}", WORLD_STYLES) for ex in examples
        ]
    return out


def write_tasks(directory: Path, groups: dict[str, list[Row]], seed: int = 0) -> TaskSet:
    """Write ``<directory>/<task>.jsonl`` and ``<task>.yaml`` for every group of rows (a family
    or a source), with the templates beside them; returns the task names."""
    directory.mkdir(parents=True, exist_ok=True)
    for template in TEMPLATES.iterdir():
        if template.suffix in (".yaml", ".py"):
            shutil.copyfile(template, directory / template.name)
    written = TaskSet(directory.resolve())
    for name, rows in groups.items():
        if not rows:
            continue
        task = task_name(name)
        docs = [
            {"id": r.id, "prompt": r.prompt, "answer": r.answer, "verifier": r.verifier}
            for r in rows
        ]
        _write(directory, task, "_avocado_generation.yaml", docs)
        written.generation.append(task)
        written.rows[task] = len(docs)
        mc = _multiple_choice(rows, random.Random(f"{name}/{seed}"))
        if mc:
            _write(directory, f"{task}_mc", "_avocado_multiple_choice.yaml", mc)
            written.multiple_choice.append(f"{task}_mc")
            written.rows[f"{task}_mc"] = len(mc)
    return written


def _multiple_choice(rows: list[Row], rng: random.Random) -> list[dict[str, Any]]:
    """Each row with its gold answer among up to :data:`DISTRACTORS` other answers of the
    group (distinct once normalized), each in every phrasing of the row; ``gold``: the gold
    answer's options. None when the group has a single answer."""
    answers = list(dict.fromkeys(r.answer for r in rows))
    docs = []
    for r in rows:
        others = [a for a in answers if world.normalize(a) != world.normalize(r.answer)]
        if not others:
            continue
        picked = rng.sample(others, min(DISTRACTORS, len(others)))
        at = rng.randrange(len(picked) + 1)
        options = [*picked[:at], r.answer, *picked[at:]]
        k = len(r.styles)
        docs.append({
            "id": r.id, "prompt": r.prompt, "answer": r.answer,
            "choices": [style.format(o) for o in options for style in r.styles],
            "gold": list(range(at * k, at * k + k)),
        })  # fmt: skip
    return docs


def _write(directory: Path, task: str, template: str, docs: list[dict[str, Any]]) -> None:
    data = (directory / f"{task}.jsonl").resolve()
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), "utf-8")
    config = {
        "include": template,
        "task": task,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
    }
    (directory / f"{task}.yaml").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
