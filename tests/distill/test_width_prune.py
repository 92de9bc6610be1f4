"""MLP width pruning (``student.prune.mlp_size``) and ``max_params`` over blocks, MLP width and
vocabulary: a tiny random Llama (made here, no downloads) whose MLPs have dead neurons (their
gate rows zeroed, so act(gate) * up is 0): they must rank last, and cutting exactly them must
leave the model's outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
)

from avocado_llm.config import RecipeError, recipe_from_dict
from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.prune import (
    calibration_batches,
    calibration_texts,
    decoder_layers,
    plan_sizes,
    prune_model,
)
from avocado_llm.distill.width import neuron_importance
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.templates import CHATML
from avocado_llm.world.tokenizers import QWEN_PATTERN, TokenizerSpec, train_tokenizer, wrap

LAYERS, WIDTH, ALIVE = 4, 48, 40
EXAMPLES = [
    ([{"role": "user", "content": f"What is {a} plus {b}?"}], f"The answer is {a + b}.")
    for a in range(3, 9)
    for b in range(2, 5)
]


@pytest.fixture(scope="module")
def tok() -> object:
    spec = TokenizerSpec(
        type="byte_bpe",
        vocab_size=500,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        pattern=QWEN_PATTERN,
    )
    return wrap(train_tokenizer(spec, world_corpus(0)[:2000]), spec, CHATML)


def dead_neurons(layer: int) -> list[int]:
    """The neurons of block ``layer`` whose gate rows are zeroed (a different set per block)."""
    return [(layer * 7 + 5 * k) % WIDTH for k in range(WIDTH - ALIVE)]


def tiny_llama(tok: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.mlp.gate_proj.weight[dead_neurons(i)] = 0
    return model


def test_dead_neurons_rank_last_and_cutting_them_changes_nothing(
    tok: object, tmp_path: Path
) -> None:
    whole, model = tiny_llama(tok), tiny_llama(tok)
    texts = calibration_texts(tok, EXAMPLES, 8)
    layers = decoder_layers(model)
    importance = neuron_importance(model, layers, calibration_batches(model, tok, texts))
    assert [len(s) for s in importance] == [WIDTH] * LAYERS
    for i, scores in enumerate(importance):
        dead = dead_neurons(i)
        assert float(scores[dead].abs().max()) == 0.0
        assert float(scores[[j for j in range(WIDTH) if j not in dead]].min()) > 0.0
    plan = prune_model(model, tok, PruneConfig(mlp_size=ALIVE), texts, origin="tiny")
    assert plan.kept == list(range(LAYERS)) and plan.mlp == {"before": WIDTH, "after": ALIVE}
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (ALIVE, 32)
        assert layer.mlp.down_proj.weight.shape == (32, ALIVE)
    assert model.config.intermediate_size == ALIVE
    assert plan.params_before - plan.params_after == LAYERS * (WIDTH - ALIVE) * 3 * 32
    prompt = tok.apply_chat_template(
        EXAMPLES[0][0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**prompt).logits, whole(**prompt).logits)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**prompt).logits, whole(**prompt).logits)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["intermediate_size"] == ALIVE
    assert record["pruned_from"]["mlp_size"] == {"before": WIDTH, "after": ALIVE}
    # One neuron fewer than the live ones: the model changes.
    fewer = tiny_llama(tok)
    prune_model(fewer, tok, PruneConfig(mlp_size=ALIVE - 1), texts)
    with torch.no_grad():
        assert not torch.allclose(fewer(**prompt).logits, whole(**prompt).logits)


def test_max_params_sizes_the_mlp_to_fit(tok: object) -> None:
    model = tiny_llama(tok)
    total = sum(p.numel() for p in model.parameters())
    per_neuron = 3 * 32
    # All 4 blocks with 24 neurons each: exactly the limit; one less allows only 16 (× 8).
    limit = total - LAYERS * (WIDTH - 24) * per_neuron
    cfg = PruneConfig(max_params=limit, fit="mlp_size")
    assert plan_sizes(model, cfg).mlp_size == 24 and plan_sizes(model, cfg).layers == LAYERS
    assert plan_sizes(model, PruneConfig(max_params=limit - 1, fit="mlp_size")).mlp_size == 16
    two = PruneConfig(max_params=limit, fit="mlp_size", keep_layers=2)
    assert plan_sizes(model, two).mlp_size == WIDTH  # 2 blocks fit whole: no cut
    texts = calibration_texts(tok, EXAMPLES, 8)
    plan = prune_model(model, tok, cfg, texts)
    assert plan.params_after == limit and model.config.intermediate_size == 24
    with pytest.raises(ValueError, match="without their MLPs"):
        plan_sizes(tiny_llama(tok), PruneConfig(max_params=total // 4, fit="mlp_size"))


def test_max_params_with_all_three(tok: object) -> None:
    model = tiny_llama(tok)
    embed = len(tok) * 32
    attention = sum(p.numel() for p in model.model.layers[0].parameters()) - WIDTH * 96
    # 3 blocks with 16 neurons, 300 tokens, the final norm.
    exact = 300 * 32 + 32 + 3 * (attention + 16 * 96)
    cfg = PruneConfig(max_params=exact, mlp_size=16, vocab_size=300)
    assert plan_sizes(model, cfg) == plan_sizes(model, cfg)  # deterministic
    sizes = plan_sizes(model, cfg)
    assert (sizes.layers, sizes.mlp_size, sizes.vocab_size) == (3, 16, 300)
    over = PruneConfig(max_params=exact - 1, mlp_size=16, vocab_size=300, keep_layers=3)
    with pytest.raises(ValueError, match=r"would have [\d,]+ parameters: 3 blocks"):
        plan_sizes(model, over)
    with pytest.raises(ValueError, match="only 48 neurons"):
        plan_sizes(model, PruneConfig(mlp_size=49))
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    plan = prune_model(model, tok, cfg, texts)
    assert plan.params_after == exact < embed + LAYERS * (attention + WIDTH * 96)
    assert len(plan.kept) == 3 and plan.vocab["after"] == 300
    record = model.config.pruned_from
    assert record["mlp_size"]["after"] == 16 and record["vocab"]["before"] == len(tok)


def test_an_mlp_without_gate_up_down_is_refused(tok: object) -> None:
    config = PhiConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    phi = PhiForCausalLM(config)
    texts = calibration_texts(tok, EXAMPLES, 4)
    with pytest.raises(ValueError, match="no gate_proj / up_proj / down_proj"):
        prune_model(phi, tok, PruneConfig(mlp_size=32), texts)
    assert phi.model.layers[0].mlp.fc1.out_features == 64  # untouched


def test_recipe_checks_fit_and_mlp_size(tmp_path: Path) -> None:
    def problems(**prune: object) -> str:
        data = {
            "name": "w",
            "output_dir": str(tmp_path / "runs"),
            "world": {"families": ["arithmetic"], "heldout_per_family": 4},
            "teachers": [{"name": "t", "path": str(tmp_path), "licence": "test"}],
            "student": {"init_from_teacher": "t", "prune": prune},
            "eval": {"heldout_per_family": 4, "baselines": []},
        }
        with pytest.raises(RecipeError) as error:
            recipe_from_dict(data, base_dir=tmp_path)
        return str(error.value)

    assert "fit: mlp_size sizes the MLP to max_params" in problems(fit="mlp_size")
    assert "sizes the MLP itself" in problems(fit="mlp_size", max_params=10, mlp_size=8)
    assert "must be >= 1" in problems(mlp_size=0)
    assert "must be >= 1" in problems(vocab_size=0)
    assert "is not one of" in problems(fit="vocab")
