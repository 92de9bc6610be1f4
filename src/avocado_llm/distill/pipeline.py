"""``avocado distill``: fused examples + harvest records → a trained student artifact.

Setup (student, items with aligned targets) → :func:`avocado_llm.distill.train.train` → save
(HF directory, ``avocado.json`` with provenance, model card, loss curve).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from avocado_llm.config import Recipe, recipe_to_dict
from avocado_llm.distill.align import kd_targets
from avocado_llm.distill.batches import DistillItem, TeacherTargets, encode_item
from avocado_llm.distill.card import model_card, plot_losses
from avocado_llm.distill.student import build_student, check_size, n_params, save_student
from avocado_llm.distill.train import train
from avocado_llm.fusion import FusedExample, read_fused, strategy_slug
from avocado_llm.harvest import read_records
from avocado_llm.teachers import teacher_path
from avocado_llm.world.tokenizers import tokenizer_type
from avocado_llm.world.zoo import count_params

ALIGN_KIND = {"byte_bpe": "byte_level", "unigram": "sentencepiece", "char_bpe": "sentencepiece"}


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
    """How each teacher's token strings spell bytes (for alignment)."""
    kinds = {}
    for t in recipe.teachers:
        if t.kind == "openai":
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


def distill(
    recipe: Recipe,
    *,
    strategy: str | None = None,
    out: Path | None = None,
    resume: bool = False,
    use_kd: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train the recipe's student on its fused harvest; returns the artifact directory."""
    paths = default_paths(recipe, strategy, out)
    if not paths.fused.exists():
        raise FileNotFoundError(
            f"no fused examples at {paths.fused}; run `avocado fuse` for this recipe first"
        )
    fused = read_fused(paths.fused)
    table = read_records(paths.harvest)
    records = {row["key"]: row for row in table.to_pylist()}
    model, tok = build_student(recipe.student, seed=recipe.seed)
    check_size(model, teacher_params(recipe), recipe.student.max_params_ratio)
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
        "final_loss": history[-1].loss if history else None,
        "recipe": recipe_to_dict(recipe),
    }
    (paths.out / "avocado.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (paths.out / "README.md").write_text(model_card(meta))
    plot_losses(paths.out / "loss.jsonl", paths.out / "loss.png")
    return paths.out
