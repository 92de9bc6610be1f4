"""The real SmolLM2-135M-Instruct with its vocabulary trimmed to 4,096 of 49,152 tokens
(``student.prune.vocab_size``): the task's chats tokenize exactly as before, any other text
(other scripts, emoji, digits) still round-trips, the logits at the kept ids are the whole
model's, and the trimmed directory loads as a plain HF model that answers like the whole one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from avocado_llm.config.student import PruneConfig
from avocado_llm.distill.prune import calibration_texts, prune_model

pytestmark = pytest.mark.real

EXAMPLES = [
    ([{"role": "user", "content": "What is the capital of France? Answer with the name only."}],
     "Paris"),
    ([{"role": "user", "content": "What is the plural of 'horse'? Answer with one word."}],
     "horses"),
    ([{"role": "user", "content": "How many legs does a spider have?"}], "8"),
    ([{"role": "user", "content": "What colour is a swan? Answer with one word."}], "white"),
]  # fmt: skip
UNSEEN = [
    "Grüße aus Köln! ¿Qué tal? Привет, мир. 你好，世界。",
    "emoji 🥑🚀👍🏽, digits 3.14159 and 2026-12-05, code: def f(x): return x**2",
]


def test_smollm2_trimmed_to_4096_tokens(smollm2: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smollm2)
    whole = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    texts = calibration_texts(tok, EXAMPLES, len(EXAMPLES))
    plan = prune_model(model, tok, PruneConfig(vocab_size=4096), texts, origin="smollm2")
    trimmed = plan.tokenizer
    assert trimmed is not None and len(trimmed) == 4096
    assert plan.params_before - plan.params_after == (49152 - 4096) * 576  # tied embedding
    for text in texts:
        ids = trimmed(text, add_special_tokens=False)["input_ids"]
        old = tok(text, add_special_tokens=False)["input_ids"]
        assert trimmed.convert_ids_to_tokens(ids) == tok.convert_ids_to_tokens(old)
        keep = torch.tensor([tok.convert_tokens_to_ids(p) for p in trimmed.convert_ids_to_tokens(
            list(range(4096))
        )])  # fmt: skip
        with torch.no_grad():
            new_logits = model(input_ids=torch.tensor([ids])).logits
            old_logits = whole(input_ids=torch.tensor([old])).logits[..., keep]
        torch.testing.assert_close(new_logits, old_logits, atol=1e-4, rtol=1e-4)
    for text in UNSEEN:
        assert trimmed.decode(trimmed(text, add_special_tokens=False)["input_ids"]) == text
    model.save_pretrained(tmp_path)
    trimmed.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    prompt = tok2.apply_chat_template(
        EXAMPLES[0][0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = again.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tok2.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == 4096 and config["pruned_from"]["vocab"]["before"] == 49152
    assert (config["eos_token_id"], tok2.eos_token) == (tok2.eos_token_id, "<|im_end|>")
