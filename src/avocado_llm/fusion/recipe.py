"""``fuse_recipe``: a recipe's harvest in, its fused file out — the one wiring of the fusion
stage, called by ``avocado fuse`` and by ``avocado run``.

It reads only the records the recipe's harvest settings ask for (a harvest directory keeps the
answers of earlier settings too), loads the local teachers a strategy scores with, and writes
``<run>/fusion/<strategy>.parquet`` with a fingerprint of what made it. With ``reuse`` a fused
file made from the same records and settings is kept as it is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avocado_llm.config import Recipe
from avocado_llm.config.fingerprint import changes, digest, summary
from avocado_llm.data.verifiers import versions
from avocado_llm.fusion.example import FusionError, FusionReport
from avocado_llm.fusion.fuse import fuse
from avocado_llm.fusion.scoring import Scorer
from avocado_llm.fusion.store import read_fingerprint, strategy_slug, write_fused
from avocado_llm.fusion.strategies import scorers_needed

if TYPE_CHECKING:
    import pyarrow as pa


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class Fused:
    """What :func:`fuse_recipe` did: the file, and the report of a fusion it ran now
    (``None`` when an up-to-date file was reused)."""

    path: Path
    strategy: str
    examples: int
    report: FusionReport | None


def recipe_records(recipe: Recipe, records: pa.Table) -> pa.Table:
    """The records this recipe's harvest asks for: its teachers, its prompts, its sampling and
    samples. A harvest directory keeps the answers of earlier settings too (their keys differ,
    so they are never mistaken for done); fusion must not learn from them."""
    import pyarrow as pa

    from avocado_llm.harvest import harvest_prompts
    from avocado_llm.teachers import sampling_params

    params = sampling_params(recipe.harvest, recipe.seed).as_dict()
    samples = params.pop("n")
    prompts = {ex.id for ex in harvest_prompts(recipe)}
    if recipe.data.sources:
        prompts |= _source_ids(recipe)
    teachers = {t.name for t in recipe.teachers}

    def wanted(row: dict[str, Any]) -> bool:
        sampling = {k: v for k, v in json.loads(row["sampling"]).items() if k != "n"}
        return (
            row["teacher"] in teachers
            and row["prompt_id"] in prompts
            and row["sample_index"] < samples
            and sampling == params
        )

    rows = records.select(["teacher", "prompt_id", "sample_index", "sampling"]).to_pylist()
    return records.filter(pa.array([wanted(row) for row in rows], type=pa.bool_()))


def _source_ids(recipe: Recipe) -> set[str]:
    """The ids of the training prompts of the recipe's ``data.sources`` (read as a stream)."""
    from avocado_llm.data.sources import DataError
    from avocado_llm.harvest.prompts import source_prompts

    try:
        return {ex.id for ex in source_prompts(recipe)}
    except DataError as error:
        raise FusionError(str(error)) from None


def fusion_fingerprint(recipe: Recipe, strategy: str, records: pa.Table) -> dict[str, Any]:
    """What makes a fused file: the fusion fields and the records it reads (their keys name
    teacher, revision, prompt and sampling; their completions are the answers)."""
    keys, texts = records["key"].to_pylist(), records["completion"].to_pylist()
    answers = sorted(zip(keys, texts, strict=True))
    return (
        {
            "fusion.strategy": strategy,
            "fusion.min_weight": recipe.fusion.min_weight,
            "fusion.judge_teacher": recipe.fusion.judge_teacher,
            "world.unverified": sorted(recipe.world.unverified),
            "input:harvest records": f"{len(answers)} records, {digest(answers)}",
        }
        | _sources_fingerprint(recipe)
        | _reference_fingerprint(recipe)
    )


def _reference_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """``fusion.use_reference`` when set (fused files made before it existed keep matching)."""
    return {"fusion.use_reference": True} if recipe.fusion.use_reference else {}


def _sources_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The verifiers of the recipe's ``data.sources`` (none at all for the tiny world alone),
    and the versions of those that changed (``short`` and ``number`` read the question since
    version 2: a file fused with version 1 is fused again)."""
    if not recipe.data.sources:
        return {}
    specs = {s.name: s.verifier for s in recipe.data.sources}
    return {"data.sources verifiers": specs} | versions(specs.values())


def fuse_recipe(
    recipe: Recipe,
    strategy: str | None = None,
    *,
    harvest_dir: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    reuse: bool = False,
    note: Callable[[str], None] = _stderr,
) -> Fused:
    """Fuse the recipe's harvest with ``strategy`` [its ``fusion.strategy``] into ``out``
    [``<run>/fusion``]. ``harvest_dir`` reads another harvest, whole (no filtering by this
    recipe's settings). Raises :class:`FusionError` (nothing to fuse, no judge) or
    ``TeacherError`` (a scorer that does not load); ``note`` hears what it decided."""
    strategy = strategy or recipe.fusion.strategy
    out = out or recipe.run_dir / "fusion"
    records = _records(recipe, harvest_dir, note)
    fingerprint = fusion_fingerprint(recipe, strategy, records)
    path = out / f"{strategy_slug(strategy)}.parquet"
    if reuse and path.exists():
        diff = changes(read_fingerprint(path), fingerprint)
        if not diff:
            note(f"fusion {strategy}: up to date ({path})")
            return Fused(path, strategy, records.num_rows, None)
        note(f"fusion {strategy}: fusing again, what made {path} changed:{summary(diff)}")
    examples, report = fuse(
        records,
        strategy,
        unverified=recipe.world.unverified,
        scorers=_scorers(recipe, strategy, device),
        judge=recipe.fusion.judge_teacher,
        min_weight=recipe.fusion.min_weight,
        use_reference=recipe.fusion.use_reference,
        sources={s.name: s.verifier for s in recipe.data.sources} or None,
    )
    path = write_fused(out, strategy, examples, report, fingerprint)
    return Fused(path, strategy, len(examples), report)


def _records(recipe: Recipe, harvest_dir: Path | None, note: Callable[[str], None]) -> pa.Table:
    from avocado_llm.harvest import read_records

    where = harvest_dir or recipe.harvest_dir
    records = read_records(where)
    if records.num_rows == 0:
        raise FusionError(f"no records in {where}; run `avocado harvest RECIPE` first")
    if harvest_dir is not None:  # another harvest, named by the caller: all of it
        return records
    total, records = records.num_rows, recipe_records(recipe, records)
    if records.num_rows < total:
        left_out = total - records.num_rows
        note(f"fusion: {left_out:,} of {total:,} records in {where} were made with other "
             "harvest settings (teachers, prompts, sampling) and are left out")  # fmt: skip
    if records.num_rows == 0:
        raise FusionError(f"no records of this recipe's harvest settings in {where}; run "
                          "`avocado harvest RECIPE` first")  # fmt: skip
    return records


def _scorers(recipe: Recipe, strategy: str, device: str) -> dict[str, Scorer] | None:
    """The local teachers ``strategy`` scores with, loaded (``None`` when it needs none)."""
    from avocado_llm.teachers import load_teacher

    local = [t.name for t in recipe.teachers if t.kind == "local"]
    judge = recipe.fusion.judge_teacher
    if strategy == "judge" and judge not in local:
        known = ", ".join(local) or "none"
        raise FusionError(f"the judge strategy needs fusion.judge_teacher set to a local "
                          f"teacher (one of {known}); it is {judge!r}")  # fmt: skip
    needed = scorers_needed(strategy, local, judge)
    scorers = {cfg.name: load_teacher(cfg, recipe, device) for cfg in recipe.teachers
               if cfg.name in needed}  # fmt: skip
    return scorers or None  # type: ignore[return-value]
