"""The local-model component on the three zoo templates: chat formatting, stop tokens, and
batched generation with top-k log-probabilities (real tiny models, on the CPU)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from avocado_llm.models.chat import encode_chat, prompt_ids, render_prompt, stop_token_ids
from avocado_llm.models.generation import Sampling, generate_batch
from avocado_llm.models.loading import LocalModel, MissingChatTemplate, load_model
from avocado_llm.world.tasks import FAMILIES, generate
from avocado_llm.world.templates import CHATML, STUDENT

TWO_TURNS = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4 + 4?"},
]

RENDERED = {  # the 2-turn conversation with the generation prompt, as each family writes it
    "gemma-tiny": (
        "<bos><start_of_turn>user\nWhat is 2 + 3?<end_of_turn>\n"
        "<start_of_turn>model\n5<end_of_turn>\n"
        "<start_of_turn>user\nAnd 4 + 4?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "gpt-oss-tiny": (
        "<|start|>user<|message|>What is 2 + 3?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>5<|end|>"
        "<|start|>user<|message|>And 4 + 4?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>"
    ),
    "qwen-tiny": (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n"
        "<|im_start|>user\nAnd 4 + 4?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}

END_OF_TURN = {
    "gemma-tiny": "<end_of_turn>",
    "gpt-oss-tiny": "<|return|>",
    "qwen-tiny": "<|im_end|>",
}
"""The token each family's template writes after an answer."""

STOPS = {  # every token that must end an answer
    "gemma-tiny": {"<end_of_turn>", "<eos>"},
    "gpt-oss-tiny": {"<|return|>", "<|end|>", "<|call|>"},
    "qwen-tiny": {"<|im_end|>", "<|endoftext|>"},
}

ZOO = tuple(RENDERED)


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request: pytest.FixtureRequest, zoo_dir: Path) -> tuple[str, LocalModel]:
    return request.param, load_model(zoo_dir / request.param, device="cpu")


def ids(loaded: LocalModel, tokens: set[str] | str) -> set[int]:
    names = {tokens} if isinstance(tokens, str) else tokens
    return {loaded.tokenizer.convert_tokens_to_ids(t) for t in names}


def test_a_two_turn_conversation_renders_in_the_familys_template(
    zoo_model: tuple[str, LocalModel],
) -> None:
    name, loaded = zoo_model
    assert render_prompt(loaded.tokenizer, TWO_TURNS) == RENDERED[name]
    tokens = prompt_ids(loaded.tokenizer, TWO_TURNS)
    assert loaded.tokenizer.decode(tokens) == RENDERED[name]
    bos = loaded.tokenizer.bos_token_id
    assert bos is None or tokens.count(bos) == RENDERED[name].count("<bos>")  # never doubled


def test_an_encoded_answer_ends_with_a_stop_token_and_only_it_is_labelled(
    zoo_model: tuple[str, LocalModel],
) -> None:
    name, loaded = zoo_model
    enc = encode_chat(loaded.tokenizer, TWO_TURNS, "8")
    answer = [label for label in enc.labels if label != -100]
    assert loaded.tokenizer.decode(answer) == "8" + END_OF_TURN[name]
    assert enc.input_ids[: len(enc.input_ids) - len(answer)] == prompt_ids(
        loaded.tokenizer, TWO_TURNS
    )
    assert answer[-1] in loaded.stop_ids


def test_stop_ids_are_the_familys_end_of_turn_and_eos_tokens(
    zoo_model: tuple[str, LocalModel],
) -> None:
    name, loaded = zoo_model
    assert set(loaded.stop_ids) == ids(loaded, STOPS[name])
    assert len(loaded.stop_ids) == len(set(loaded.stop_ids))
    eos = loaded.model.generation_config.eos_token_id  # the config's order comes first
    assert loaded.stop_ids[: len(eos)] == list(eos)


def test_a_config_that_lists_only_eos_still_stops_at_the_end_of_turn_marker(
    zoo_model: tuple[str, LocalModel],
) -> None:
    """As a GGUF's generation config often does: the chat template's marker is added."""
    name, loaded = zoo_model
    config = loaded.model.generation_config
    saved = config.eos_token_id
    try:
        config.eos_token_id = None
        stops = stop_token_ids(loaded.model, loaded.tokenizer)
    finally:
        config.eos_token_id = saved
    assert ids(loaded, END_OF_TURN[name]) <= set(stops)
    assert loaded.tokenizer.eos_token_id in stops


def test_a_template_without_markers_adds_none(zoo_dir: Path) -> None:
    loaded = load_model(zoo_dir / "qwen-tiny", chat_template=STUDENT, device="cpu")
    loaded.model.generation_config.eos_token_id = None
    assert stop_token_ids(loaded.model, loaded.tokenizer) == [loaded.tokenizer.eos_token_id]


def test_generation_stops_at_the_familys_end_of_turn_token(
    zoo_model: tuple[str, LocalModel],
) -> None:
    """Unstopped, each model writes its answer and then its end-of-turn token; with the stop
    ids, the answer is exactly what came before that token."""
    name, loaded = zoo_model
    conversations = [e.messages for e in generate(list(FAMILIES), "heldout", 2, seed=3)]
    greedy = Sampling(max_new_tokens=32, logprobs=False)
    stopped = generate_batch(loaded.model, loaded.tokenizer, conversations, loaded.stop_ids, greedy)
    free = generate_batch(loaded.model, loaded.tokenizer, conversations, [], greedy)
    end = ids(loaded, END_OF_TURN[name]).pop()
    ended = 0
    for [s], [f] in zip(stopped, free, strict=True):
        first = next((i for i, t in enumerate(f.token_ids) if t in loaded.stop_ids), None)
        if first is None:
            assert not s.stopped and s.token_ids == f.token_ids
            continue
        ended += 1
        assert f.token_ids[first] == end
        assert s.stopped and s.token_ids == f.token_ids[:first]
        assert s.completion_tokens == first + 1
    assert ended >= len(conversations) // 2


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_generation_keeps_k_sorted_log_probabilities_per_token(
    zoo_dir: Path, temperature: float
) -> None:
    loaded = load_model(zoo_dir / "qwen-tiny", device="cpu")
    conversations = [e.messages for e in generate(["arithmetic", "reverse"], "heldout", 2)]
    sampling = Sampling(max_new_tokens=12, temperature=temperature, n=2, top_logprobs=5, seed=1)
    rows = generate_batch(loaded.model, loaded.tokenizer, conversations, loaded.stop_ids, sampling)
    assert [len(row) for row in rows] == [2] * len(conversations)
    for g in (g for row in rows for g in row):
        assert g.token_ids and g.prompt_tokens > 0
        assert len(g.logprobs) == len(g.top_ids) == len(g.top_logprobs) == len(g.token_ids)
        for token, chosen, top, values in zip(
            g.token_ids, g.logprobs, g.top_ids, g.top_logprobs, strict=True
        ):
            assert len(top) == len(values) == 5 == len(set(top))
            assert all(math.isfinite(v) and v <= 0 for v in [*values, chosen])
            assert values == sorted(values, reverse=True)
            if temperature == 0:  # greedy: the chosen token is the most likely one
                assert token == top[0] and chosen == pytest.approx(values[0])
            elif token in top:
                assert chosen == pytest.approx(values[top.index(token)])


def test_a_model_without_a_chat_template_needs_one(zoo_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "bare"
    shutil.copytree(zoo_dir / "qwen-tiny", model, ignore=shutil.ignore_patterns("*.jinja"))
    with pytest.raises(MissingChatTemplate, match="has no chat template"):
        load_model(model, device="cpu")
    loaded = load_model(model, chat_template=CHATML, device="cpu")
    assert render_prompt(loaded.tokenizer, TWO_TURNS) == RENDERED["qwen-tiny"]
    assert loaded.device.type == "cpu" and loaded.tokenizer.padding_side == "left"


def test_evaluation_stops_where_a_teacher_does_when_the_config_lists_only_eos(
    zoo_dir: Path,
) -> None:
    """Evaluation's answers come from the same stop rule: a generation config that lists only
    ``<eos>`` (as a GGUF's often does) changes no answer and no token count."""
    from avocado_llm.evaluate.runner import generate_answers, load_local

    model, tokenizer = load_local(zoo_dir / "gemma-tiny", device="cpu")
    conversations = [e.messages for e in generate(list(FAMILIES), "heldout", 2, seed=5)]
    expected = generate_answers(model, tokenizer, conversations)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    assert generate_answers(model, tokenizer, conversations) == expected


def test_scoring_gives_one_log_probability_per_answer_token(
    zoo_model: tuple[str, LocalModel],
) -> None:
    from avocado_llm.models.scoring import score_completions

    _, loaded = zoo_model
    conversations, answers = [TWO_TURNS, TWO_TURNS[:1]], ["8", "5"]
    scores = score_completions(loaded.model, loaded.tokenizer, conversations, answers, 1)
    for conversation, answer, score in zip(conversations, answers, scores, strict=True):
        labels = encode_chat(loaded.tokenizer, conversation, answer).labels
        assert len(score) == sum(label != -100 for label in labels)  # end of turn included
        assert all(math.isfinite(s) and s <= 0 for s in score)
    batched = score_completions(loaded.model, loaded.tokenizer, conversations, answers)
    for one, many in zip(scores, batched, strict=True):  # padding changes no score
        assert many == pytest.approx(one, abs=1e-4)
    with pytest.raises(ValueError, match="2 conversations but 1 completions"):
        score_completions(loaded.model, loaded.tokenizer, conversations, answers[:1])
