"""``avocado distill``: fused examples + harvest records → a trained student artifact.

Setup (student, items with aligned targets) → :func:`avocado_llm.distill.train.train` → save
(HF directory, ``avocado.json`` with provenance, model card, loss curve).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from avocado_llm.config import Recipe, recipe_to_dict
from avocado_llm.config.fingerprint import StaleError, changes, normalise, pick, summary
from avocado_llm.distill.align import kd_targets
from avocado_llm.distill.batches import DistillItem, TeacherTargets, encode_item
from avocado_llm.distill.card import model_card, plot_losses
from avocado_llm.distill.student import (
    build_student,
    check_size,
    n_params,
    save_student,
    student_origin,
)
from avocado_llm.distill.train import train
from avocado_llm.fusion import FusedExample, read_fused, strategy_slug
from avocado_llm.harvest import read_records
from avocado_llm.harvest.files import acquire_lock, atomic_write, clear_entry, release_lock
from avocado_llm.teachers import teacher_path
from avocado_llm.teachers.hf import weights_revision
from avocado_llm.teachers.redact import public_url
from avocado_llm.world.corpus import count_params
from avocado_llm.world.tokenizers import tokenizer_type

ALIGN_KIND = {"byte_bpe": "byte_level", "unigram": "sentencepiece", "char_bpe": "sentencepiece"}
RESUME_SAFE = (
    "training.checkpoint_every",
    "training.eval_every",
    "training.device",
    "training.keep_checkpoints",
)
"""Fields that do not change the trained model: they may change on ``--resume`` and do not make
a trained student stale. Every other ``student.*`` / ``training.*`` field, the seed, the fusion
strategy and the fused examples are in the student's fingerprint."""


def public_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as ``avocado.json`` and the model card record it: an endpoint teacher's
    ``base_url`` without the user, password or query that may carry its credentials."""
    data = recipe_to_dict(recipe)
    for teacher in data.get("teachers") or []:
        if teacher.get("base_url"):
            teacher["base_url"] = public_url(teacher["base_url"])
    return data


@dataclass
class DistillPaths:
    harvest: Path
    fused: Path
    out: Path


def default_paths(
    recipe: Recipe, strategy: str | None = None, out: Path | None = None
) -> DistillPaths:
    strategy = strategy or recipe.fusion.strategy
    run = recipe.run_dir
    return DistillPaths(
        harvest=recipe.harvest_dir,
        fused=run / "fusion" / f"{strategy_slug(strategy)}.parquet",
        out=out or run / "student",
    )


def teacher_kinds(recipe: Recipe) -> dict[str, str]:
    """How each teacher's token strings spell bytes (for alignment): an endpoint's, vLLM's
    included, are decoded text; an in-process teacher's are its vocabulary's pieces."""
    kinds = {}
    for t in recipe.teachers:
        if t.kind == "openai" or t.engine == "vllm":
            kinds[t.name] = "text"
            continue
        tok_file = teacher_path(t, recipe) / "tokenizer.json"
        family = tokenizer_type(json.loads(tok_file.read_text())) if tok_file.exists() else ""
        kinds[t.name] = ALIGN_KIND.get(family, "text")
    return kinds


def teacher_params(recipe: Recipe) -> dict[str, int]:
    out = {}
    for t in recipe.teachers:
        path = teacher_path(t, recipe) if t.kind == "local" else None
        if path is not None and path.is_dir() and any(path.glob("*.safetensors")):
            out[t.name] = count_params(path)
    return out


def build_items(
    tok: PreTrainedTokenizerBase,
    fused: list[FusedExample],
    records: dict[str, dict],
    kinds: dict[str, str],
    use_kd: bool = True,
) -> tuple[list[DistillItem], dict[str, int]]:
    """Student items; ``stats`` counts KD targets kept and teachers dropped by alignment."""
    items, stats = [], {"examples": 0, "kd_positions": 0, "kd_dropped": 0}
    for ex in fused:
        item = encode_item(tok, ex.messages, ex.target)
        item.group = ex.family
        for teacher, weight in ex.weights.items():
            row = records.get(ex.record_keys.get(teacher, ""))
            if not use_kd or weight <= 0 or row is None or row["top_tokens"] is None:
                continue
            try:
                t = kd_targets(
                    tok,
                    ex.target,
                    row["tokens"],
                    row["top_tokens"],
                    row["top_logprobs"],
                    row["token_logprobs"],
                    kinds.get(teacher, "text"),
                    {},
                )
            except ValueError:
                stats["kd_dropped"] += 1  # the teacher's tokens do not spell the target's bytes
                continue
            item.teachers.append(TeacherTargets(weight, t.positions, t.ids, t.probs, t.rest))
            stats["kd_positions"] += len(t.positions)
        items.append(item)
        stats["examples"] += 1
    return items, stats


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def distill_fingerprint(recipe: Recipe, strategy: str, use_kd: bool, fused: Path) -> dict:
    """What makes a student: its recipe fields and the digest of the examples it learns from
    (whose record keys name the teachers' answers, revisions included)."""
    fp = pick(recipe_to_dict(recipe), ["seed", "student", "training"])
    for name in (*RESUME_SAFE, "student.max_params_ratio"):
        fp.pop(name, None)
    if not recipe.student.prune.enabled:  # students trained before these fields keep matching
        fp = {k: v for k, v in fp.items() if not k.startswith("student.prune.")}
    for name, default in (("mlp_size", None), ("vocab_size", None), ("fit", "layers")):
        if fp.get(f"student.prune.{name}", default) == default:  # pruned students from before
            fp.pop(f"student.prune.{name}", None)
    if recipe.student.init_from_teacher is None:
        fp.pop("student.init_from_teacher", None)
    if recipe.training.balance_temperature is None:  # students trained before it keep matching
        fp.pop("training.balance_temperature", None)
    if not recipe.student.heal.enabled:  # students trained before healing keep matching
        fp = {k: v for k, v in fp.items() if not k.startswith("student.heal.")}
    fp |= {"fusion.strategy": strategy, "token_level_kd": use_kd}
    fp["input:fused examples"] = file_digest(fused) if fused.is_file() else None
    if (origin := student_origin(recipe)) is not None:
        fp["input:init_from"] = weights_revision(origin)
    return normalise(fp)


def heal_fingerprint(fingerprint: dict) -> dict:
    """What makes a healed student: the origin, the cut, the healing and the seed (not the task
    training nor the examples, except through the cut's calibration and vocabulary)."""
    keep = ("seed", "student.", "input:")
    return {k: v for k, v in fingerprint.items() if k.startswith(keep)}


def heal_dir(recipe: Recipe, fingerprint: dict) -> Path:
    """Where the healing of this cut is kept: one folder per cut, shared by the students made
    from it (the student and its ``sft`` baseline)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return recipe.run_dir / "healed" / digest[:16]


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def trained_fingerprint(out: Path) -> dict | None:
    """The fingerprint a finished student was saved with (``None``: none recorded)."""
    try:
        return json.loads((out / "avocado.json").read_text()).get("fingerprint")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def has_checkpoints(out: Path) -> bool:
    ckpts = out / "checkpoints"
    return (ckpts / "latest.json").exists() or any(ckpts.glob("step-*"))


def prepare_out(out: Path, fingerprint: dict, *, resume: bool, force: bool) -> None:
    """Refuse to mix two trainings in ``out``; then record what this one is made of.

    Without ``resume`` or ``force``, a directory with checkpoints or a student is refused;
    ``resume`` is refused when the checkpoints were made with other settings; ``force``
    deletes the checkpoints, loss log and artifact record and starts over."""
    ckpts = out / "checkpoints"
    if force:
        for name in ("checkpoints", "avocado.json", "loss.jsonl"):
            clear_entry(out / name)
    elif resume and has_checkpoints(out):
        try:
            stored = json.loads((ckpts / "fingerprint.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            stored = None
        if diff := changes(stored, fingerprint):
            raise StaleError(
                f"cannot resume {out}: its checkpoints were made with other settings or inputs:"
                f"{summary(diff)}\nResuming would mix two trainings. Undo the changes to resume, "
                "or pass --force to start over (its checkpoints are deleted). Fields that may "
                f"change on resume: {', '.join(RESUME_SAFE)}"
            )
    elif not resume and (has_checkpoints(out) or (out / "avocado.json").exists()):
        what = "a trained student" if (out / "avocado.json").exists() else "checkpoints"
        raise StaleError(
            f"{out} already holds {what}; pass --resume to continue its training, or --force "
            "to start over (its checkpoints are deleted)"
        )
    clear_entry(out / "avocado.json")  # the student is complete again when this training ends
    ckpts.mkdir(parents=True, exist_ok=True)
    atomic_write(ckpts / "fingerprint.json", json.dumps(fingerprint, indent=1).encode())


def distill(
    recipe: Recipe,
    *,
    strategy: str | None = None,
    out: Path | None = None,
    resume: bool = False,
    use_kd: bool = True,
    stop_after: int | None = None,
    force: bool = False,
) -> Path:
    """Train the recipe's student on its fused harvest; returns the artifact directory.

    One training per directory at a time (``out/.lock``); see :func:`prepare_out` for what
    ``resume`` and ``force`` allow."""
    paths = default_paths(recipe, strategy, out)
    if not paths.fused.exists():
        raise FileNotFoundError(
            f"no fused examples at {paths.fused}; run `avocado fuse` for this recipe first"
        )
    paths.out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(
        paths.out / ".lock",
        f"another distill is training into {paths.out}; wait for it to finish or stop it",
    )
    try:
        fingerprint = distill_fingerprint(
            recipe, strategy or recipe.fusion.strategy, use_kd, paths.fused
        )
        prepare_out(paths.out, fingerprint, resume=resume, force=force)
        return _distill(recipe, paths, strategy, resume, use_kd, stop_after, fingerprint)
    finally:
        release_lock(lock)


SOURCE_TEXT_CHARS = 2_000_000
"""Characters of each data source's training text the student tokenizer learns from."""


def student_corpus(recipe: Recipe) -> list[str] | None:
    """The text a new student's tokenizer is trained on: the world's (``None``: the default),
    and, for a recipe with ``data.sources``, the start of each source's training prompts and
    references too, so that their words get pieces of their own (any other character is still
    spelled in byte pieces)."""
    if not recipe.data.sources or student_origin(recipe) is not None:
        return None
    from avocado_llm.distill.student import world_text
    from avocado_llm.harvest.runner import source_prompts

    text = list(world_text(recipe.seed))
    taken: dict[str, int] = {}
    for ex in source_prompts(recipe):
        if taken.get(ex.family, 0) >= SOURCE_TEXT_CHARS:
            continue
        pieces = [m["content"] for m in ex.messages] + ([ex.answer] if ex.answer else [])
        text += pieces
        taken[ex.family] = taken.get(ex.family, 0) + sum(len(p) for p in pieces)
    return text


def _distill(
    recipe: Recipe,
    paths: DistillPaths,
    strategy: str | None,
    resume: bool,
    use_kd: bool,
    stop_after: int | None,
    fingerprint: dict,
) -> Path:
    fused = read_fused(paths.fused)
    table = read_records(paths.harvest)
    records = {row["key"]: row for row in table.to_pylist()}
    model, tok = build_student(
        recipe.student,
        seed=recipe.seed,
        corpus=student_corpus(recipe),
        origin=student_origin(recipe),
        examples=[(ex.messages, ex.target) for ex in fused],
    )
    check_size(model, teacher_params(recipe), recipe.student.max_params_ratio)
    healed = None
    if recipe.student.heal.enabled:
        from avocado_llm.distill.heal import heal_student
        from avocado_llm.models.loading import pick_device

        origin, heal_print = student_origin(recipe), heal_fingerprint(fingerprint)
        assert origin is not None  # the recipe check: heal needs prune, prune needs an origin
        healed = heal_student(
            model, tok, origin, recipe.student.heal, heal_dir(recipe, heal_print),
            heal_print, seed=recipe.seed,
            device=pick_device(recipe.training.device), note=_note,
        )  # fmt: skip
    items, stats = build_items(tok, fused, records, teacher_kinds(recipe), use_kd=use_kd)
    cfg = recipe.training
    if not use_kd:
        cfg = replace(cfg, alpha_ce=1.0)
    history = train(
        model,
        items,
        cfg,
        pad_id=tok.pad_token_id,
        out_dir=paths.out,
        seed=recipe.seed,
        resume=resume,
        stop_after=stop_after,
    )
    if stop_after is not None and stop_after < cfg.steps:
        return paths.out
    save_student(model, tok, paths.out)
    manifest = paths.harvest / "manifest.json"
    meta = {
        "name": recipe.name,
        "params": n_params(model),
        "teachers": [
            {"name": t.name, "licence": t.licence, "kind": t.kind} for t in recipe.teachers
        ],
        "harvest_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()
        if manifest.exists()
        else None,
        "fusion": strategy or recipe.fusion.strategy,
        "token_level_kd": use_kd,
        "items": stats,
        "heal": asdict(healed) if healed is not None else None,
        "final_loss": history[-1].loss if history else None,
        "recipe": public_recipe(recipe),
        "fingerprint": fingerprint,
    }
    atomic_write(paths.out / "README.md", model_card(meta).encode())
    plot_losses(paths.out / "loss.jsonl", paths.out / "loss.png")
    # Last: avocado.json says the student is complete, and what made it.
    text = json.dumps(meta, indent=2, default=str) + "\n"
    atomic_write(paths.out / "avocado.json", text.encode())
    return paths.out
