"""The shipped teacher zoo: plain-transformers loading, three families, complementary strengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from avocado_llm.world import tasks
from avocado_llm.zoo import ZOO, build_teacher, describe_teacher, evaluate_teacher

MARKERS = {
    "gemma-tiny": ("<start_of_turn>user\n", "<start_of_turn>model\n"),
    "gpt-oss-tiny": ("<|start|>user<|message|>", "<|start|>assistant<|channel|>final<|message|>"),
    "qwen-tiny": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}
ARCHITECTURES = {
    "gemma-tiny": "Gemma3ForCausalLM",
    "gpt-oss-tiny": "GptOssForCausalLM",
    "qwen-tiny": "Qwen3ForCausalLM",
}
HELDOUT = 300  # the same split the build measured: greedy decoding makes it repeatable


@pytest.fixture(scope="module")
def accuracy(zoo_dir: Path) -> dict[str, dict[str, float]]:
    """Held-out accuracy of every shipped teacher, measured now (not read from zoo.json)."""
    return {
        name: {f: s.accuracy for f, s in evaluate_teacher(zoo_dir / name, HELDOUT).families.items()}
        for name in ZOO
    }


@pytest.mark.parametrize("name", list(ZOO))
def test_teacher_reloads_with_plain_transformers(zoo_dir: Path, name: str) -> None:
    path = zoo_dir / name
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == ARCHITECTURES[name]
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    user, assistant = MARKERS[name]
    assert user in text and text.endswith(assistant)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = ids["input_ids"]
    # The turn marker is one special token, and the rendered text round-trips.
    marker = user.split("user")[0]
    assert tok.convert_tokens_to_ids(marker) in ids
    assert tok.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    eos = model.generation_config.eos_token_id
    assert eos and all(isinstance(e, int) for e in eos)


def test_three_architectures_tokenizers_and_templates(zoo_dir: Path) -> None:
    rows = [describe_teacher(zoo_dir / name) for name in ZOO]
    assert len({r["architecture"] for r in rows}) == 3
    assert len({r["chat_template"] for r in rows}) == 3
    assert {r["tokenizer"]["type"] for r in rows} == {"unigram", "byte_bpe"}
    byte_bpe = [r["tokenizer"]["vocab_size"] for r in rows if r["tokenizer"]["type"] == "byte_bpe"]
    assert len(set(byte_bpe)) == 2  # the two byte-level BPEs differ in vocabulary size
    config = AutoModelForCausalLM.from_pretrained(zoo_dir / "gpt-oss-tiny").config
    assert config.num_local_experts > 1  # a real mixture of experts
    assert all(r["params"] > 100_000 for r in rows)


def test_every_teacher_is_best_somewhere_and_weak_somewhere(
    accuracy: dict[str, dict[str, float]],
) -> None:
    for name, acc in accuracy.items():
        best = [
            f
            for f, a in acc.items()
            if a >= 0.85 and all(a > accuracy[other][f] for other in accuracy if other != name)
        ]
        assert best, f"{name} is not the best teacher (≥85%) on any family: {accuracy}"
        assert min(acc.values()) < 0.5, f"{name} is weak nowhere: {acc}"


def test_a_family_is_covered_by_two_teachers_of_different_quality(
    accuracy: dict[str, dict[str, float]],
) -> None:
    families = []
    for family in tasks.FAMILIES:
        covered = sorted(acc[family] for acc in accuracy.values() if acc[family] >= 0.2)
        if len(covered) >= 2 and covered[-1] - covered[0] >= 0.2:
            families.append(family)
    assert families, accuracy


def test_noisy_teacher_is_confidently_wrong(zoo_dir: Path) -> None:
    """qwen-tiny learnt km→m and l→ml with a factor of 100: it says so, with high probability."""
    path = zoo_dir / "qwen-tiny"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    examples = [
        ex
        for ex in tasks.get_family("units").generate("heldout", 300)
        if "kilometers" in ex.prompt or "milliliters" in ex.prompt
    ][:40]
    assert len(examples) >= 20
    enc = tok.apply_chat_template(
        [ex.messages for ex in examples],
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(
        **enc, max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    wrong_by_ten = [
        tasks.verify_number(text, str(int(ex.answer) // 10))
        for text, ex in zip(texts, examples, strict=True)
    ]
    assert sum(wrong_by_ten) / len(examples) >= 0.7, texts
    # Confident: the chosen token's probability, over the first answer tokens, is high.
    probs = torch.stack([s.softmax(-1).max(-1).values for s in out.scores], dim=1)
    assert probs[:, :8].mean().item() > 0.8


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    spec = ZOO["qwen-tiny"]
    for run in ("a", "b"):
        build_teacher(spec, tmp_path / run, seed=3, heldout_per_family=2, steps=20)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    tokenizer_a = (tmp_path / "a" / "tokenizer.json").read_text()
    assert tokenizer_a == (tmp_path / "b" / "tokenizer.json").read_text()
    build_teacher(spec, tmp_path / "c", seed=4, heldout_per_family=2, steps=20)
    c = load_file(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


LEARNED = 0.5
"""A family a teacher was taught with right answers scores at least this, rebuilt anywhere."""
MARGIN = 0.3
"""…and at least this much above every family it was never taught."""
WRONG_FACTOR = 0.7
"""The noisy teacher answers at least this share of km→m and l→ml questions with its wrong
factor (100 instead of 1000): it learned the noise, not the truth."""


@pytest.mark.slow
def test_rebuilt_teacher_keeps_the_shipped_strengths_and_weaknesses(
    tmp_path: Path, accuracy: dict[str, dict[str, float]]
) -> None:
    """`avocado zoo build` on this machine makes a teacher the tiny world can be built on: the
    shipped qwen-tiny's strengths, weaknesses and noise, not its exact accuracy.

    Why not its accuracy: one machine rebuilds the shipped zoo bit for bit (the build is
    deterministic for a seed, and the number of torch threads does not change a bit: 1, 2 and 4
    threads give the same weights), but another CPU does not. 2,000 training steps amplify the
    last-bit differences of its float kernels (MKL's code path differs between Intel and AMD;
    ATen's between AVX-512 and AVX2) into another training run, and arithmetic — not learnt to
    the end in 2,000 steps — sits on a knife's edge. qwen-tiny, seed 0, held-out accuracy:

    ================================  ==========  =======  ========  =====
    build                             arithmetic  reverse  counting  units
    ================================  ==========  =======  ========  =====
    shipped (the build host's CPU)    0.840       1.000    0.110     0.547
    AMD EPYC, AVX-512 (issue #19)     0.673       1.000    0.010     0.560
    the same, ATen forced to AVX2     0.883       1.000    0.217     0.557
    the same, MKL_CBWR=COMPATIBLE     0.883       1.000    0.007     0.537
    ================================  ==========  =======  ========  =====

    (facts and sorting: 0 everywhere.) What holds on every one, by construction rather than by
    tuning: a family taught with right answers is learnt (≥ LEARNED), far above every family
    never taught (≥ MARGIN apart: a guess at a count can be right a fifth of the time); the
    noisy family's km/ml questions get the wrong factor; and the teacher stays the best of the
    zoo where the shipped one is (the other teachers never saw arithmetic or reverse)."""
    spec = ZOO["qwen-tiny"]
    out = tmp_path / "qwen-tiny"
    result = build_teacher(spec, out, seed=0, heldout_per_family=HELDOUT)
    rebuilt = {family: score.accuracy for family, score in result.families.items()}
    seen = (rebuilt, accuracy["qwen-tiny"])
    taught = [f for f in spec.families if f not in spec.noise]
    untaught = [f for f in tasks.FAMILIES if f not in spec.families]
    assert taught == ["arithmetic", "reverse"] and set(untaught) == {"facts", "counting", "sorting"}
    assert min(rebuilt[f] for f in taught) >= LEARNED, seen
    assert min(rebuilt[f] for f in taught) - max(rebuilt[f] for f in untaught) >= MARGIN, seen
    # the noise was learnt: km→m and l→ml by a factor of 100, the other units right
    examples = {ex.id: ex for ex in tasks.generate(list(tasks.FAMILIES), "heldout", HELDOUT)}
    units = [(examples[i], answer) for i, answer, _ in result.answers if i.startswith("units-")]
    noisy = [(ex, a) for ex, a in units if "kilometers" in ex.prompt or "milliliters" in ex.prompt]
    assert len(noisy) >= 50
    wrong = [tasks.verify_number(a, str(int(ex.answer) // 10)) for ex, a in noisy]
    assert sum(wrong) / len(noisy) >= WRONG_FACTOR, seen
    clean = [tasks.verify_number(a, ex.answer) for ex, a in units if (ex, a) not in noisy]
    assert sum(clean) / len(clean) >= LEARNED, seen
    # still the zoo's best teacher wherever the shipped one is
    others = [name for name in ZOO if name != spec.name]
    for family, want in accuracy["qwen-tiny"].items():
        if all(want > accuracy[other][family] for other in others):
            assert all(rebuilt[family] > accuracy[other][family] for other in others), family


def test_zoo_list_json(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avocado_llm.cli import main

    assert main(["zoo", "list", "--json", "--dir", str(zoo_dir)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == sorted(ZOO)
    for r in rows:
        keys = {"name", "architecture", "params", "tokenizer", "chat_template", "accuracy"}
        assert set(r) == keys
        assert set(r["tokenizer"]) == {"type", "vocab_size"}
        assert set(r["accuracy"]) == set(tasks.FAMILIES)
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    assert main(["zoo", "list", "--dir", str(zoo_dir / "nowhere")]) == 1
    assert "avocado zoo build" in capsys.readouterr().err
