"""Healing a cut student on its parent's text (``student.heal``): the zoo's qwen-tiny (a trained
teacher, byte-level BPE) cut to one block and a trimmed vocabulary, healed on text it writes
itself; and the pipeline's healing, done once per cut and reused by the next student."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from avocado_llm.config import RecipeError, load_recipe, recipe_from_dict
from avocado_llm.config.student import HealConfig, PruneConfig
from avocado_llm.distill.heal import heal, kl_loss, parent_text, start_id, vocab_map
from avocado_llm.distill.prune import calibration_texts, prune_model
from avocado_llm.world.tasks import generate


def _load(path: Path) -> tuple[object, object]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _cut(parent_dir: Path, vocab_size: int | None) -> tuple[object, object]:
    student, tok = _load(parent_dir)
    examples = [(ex.messages, ex.answer) for ex in generate(["arithmetic", "reverse"], "train", 16)]
    cfg = PruneConfig(keep_layers=1, vocab_size=vocab_size)
    texts = calibration_texts(tok, examples, 16, 0)
    corpus = calibration_texts(tok, examples, len(examples), 0) if vocab_size else None
    plan = prune_model(student, tok, cfg, texts, origin=parent_dir.name, corpus=corpus)
    return student, plan.tokenizer or tok


def _distance(student: object, parent: object, allowed: torch.Tensor, first: int) -> float:
    """KL(parent ‖ student) on 8 fresh sequences of the parent's text (seed 99: not healed on)."""
    generator = torch.Generator().manual_seed(99)
    text, targets = parent_text(parent, allowed, first, 8, 48, 1.0, generator)
    first_student = int((allowed == first).nonzero()[0, 0])
    inputs = torch.cat([torch.full((8, 1), first_student), text[:, :-1]], dim=1)
    with torch.no_grad():
        return kl_loss(student(input_ids=inputs).logits, targets).item()


@pytest.mark.parametrize("vocab_size", [None, 400])
def test_healing_brings_a_cut_student_closer_to_its_parent(
    zoo_dir: Path, vocab_size: int | None
) -> None:
    torch.manual_seed(0)
    parent, parent_tok = _load(zoo_dir / "qwen-tiny")
    student, tok = _cut(zoo_dir / "qwen-tiny", vocab_size)
    rows = student.get_output_embeddings().weight.shape[0]
    allowed = vocab_map(tok, parent_tok, rows)
    assert len(allowed) == rows == (vocab_size or rows)
    # every student token is the parent's token of the same string
    sample = [0, rows // 2, rows - 1]
    assert [tok.convert_ids_to_tokens(i) for i in sample] == parent_tok.convert_ids_to_tokens(
        allowed[sample].tolist()
    )
    first = start_id(parent_tok)
    before = _distance(student, parent, allowed, first)
    cfg = HealConfig(tokens=16 * 48 * 40, sequence_length=48, batch_size=16, learning_rate=3e-3)
    lines: list[str] = []
    result = heal(student, tok, parent, parent_tok, cfg, seed=0, note=lines.append)
    after = _distance(student, parent, allowed, first)
    assert result.steps == 40 and result.tokens == 16 * 48 * 40 and lines
    assert result.kl_end < result.kl_start
    assert after < 0.7 * before, (before, after)  # closer on text it never saw


def test_parent_text_stays_in_the_student_vocabulary(zoo_dir: Path) -> None:
    parent, parent_tok = _load(zoo_dir / "qwen-tiny")
    student, tok = _cut(zoo_dir / "qwen-tiny", 400)
    allowed = vocab_map(tok, parent_tok, student.get_output_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    text, targets = parent_text(parent, allowed, start_id(parent_tok), 4, 20, 1.0, generator)
    assert text.shape == (4, 19) and targets.shape == (4, 19, 400)
    assert int(text.max()) < 400 and int(text.min()) >= 0
    assert torch.allclose(targets.exp().sum(-1), torch.ones(4, 19), atol=1e-4)
    # a tokenizer that is not the parent's cannot be healed from it
    other = AutoTokenizer.from_pretrained(zoo_dir / "gemma-tiny")
    with pytest.raises(ValueError, match="not in its parent's vocabulary"):
        vocab_map(other, parent_tok, len(other))


def test_distill_heals_a_cut_once_and_the_next_student_reuses_it(
    zoo_dir: Path, tmp_path: Path
) -> None:
    from avocado_llm.distill.pipeline import distill
    from avocado_llm.fusion import fuse_recipe
    from avocado_llm.harvest import harvest

    origin = tmp_path / "qwen-tiny"
    shutil.copytree(zoo_dir / "qwen-tiny", origin)
    data = {
        "name": "heal",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": ["arithmetic"], "heldout_per_family": 4},
        "teachers": [{"name": "t", "path": str(origin), "licence": "test"}],
        "harvest": {"prompts_per_family": 8, "max_new_tokens": 6, "top_logprobs": 3},
        "fusion": {"strategy": "single:t"},
        "student": {
            "init_from_teacher": "t",
            "prune": {"keep_layers": 1, "vocab_size": 400},
            "heal": {"tokens": 256, "sequence_length": 32, "batch_size": 4},
            "max_params_ratio": 0.9,
        },
        "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "device": "cpu"},
        "eval": {"heldout_per_family": 4, "baselines": []},
    }
    path = tmp_path / "heal.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert asyncio.run(harvest(recipe, device="cpu", progress=False)).ok
    fuse_recipe(recipe, "single:t", device="cpu", reuse=True)
    first = json.loads((distill(recipe) / "avocado.json").read_text())
    assert first["heal"]["steps"] == 2 and not first["heal"]["reused"]
    assert first["fingerprint"]["student.heal.tokens"] == 256
    (record,) = (recipe.run_dir / "healed").glob("*/heal.json")
    assert json.loads(record.read_text())["result"]["tokens"] == 256
    sft = distill(recipe, out=recipe.run_dir / "baselines" / "sft", use_kd=False)
    second = json.loads((sft / "avocado.json").read_text())
    assert second["heal"]["reused"] and second["heal"]["kl_end"] == first["heal"]["kl_end"]

    # another healing is another cut's: healed again, in its own folder
    data["student"]["heal"]["tokens"] = 384
    path.write_text(yaml.safe_dump(data))
    third = json.loads((distill(load_recipe(path), force=True) / "avocado.json").read_text())
    assert third["heal"]["steps"] == 3 and not third["heal"]["reused"]
    assert len(list((recipe.run_dir / "healed").glob("*/heal.json"))) == 2


def test_heal_needs_a_cut_and_sane_fields(tmp_path: Path) -> None:
    base = {"name": "h", "output_dir": str(tmp_path), "world": {"families": ["arithmetic"]},
            "teachers": [{"name": "t", "zoo": True}]}  # fmt: skip
    with pytest.raises(RecipeError, match="healing needs a pruned student"):
        recipe_from_dict(base | {"student": {"heal": {"tokens": 10}}}, base_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"heal\.temperature"):
        recipe_from_dict(
            base | {"student": {"init_from": str(tmp_path), "prune": {"keep_layers": 1},
                                "heal": {"tokens": 10, "temperature": 0}}},
            base_dir=tmp_path,
        )  # fmt: skip
    assert not recipe_from_dict(base, base_dir=tmp_path).student.heal.enabled
