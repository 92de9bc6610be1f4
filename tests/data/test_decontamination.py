"""Decontamination of prompt sources: a training row is dropped when a held-out prompt of any
source leaks into it (the same user text, a shared 13-word run, or the held-out question asked
with its reference answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_sources import source, write_jsonl

from avocado_llm.config import SourceConfig
from avocado_llm.data.prompts import check_sources, heldout_index, prompt_rows


def _long(words: int, seed: str) -> str:
    return " ".join(f"{seed}{i}" for i in range(words))


def test_heldout_prompts_found_in_train_are_dropped_from_train(tmp_path: Path) -> None:
    held = [_long(20, f"w{k}_") for k in range(3)]
    heldout_source = write_jsonl(tmp_path / "h.jsonl", [{"question": q} for q in held])
    train_items = [
        {"question": held[0], "sys": "Another system prompt."},  # exact user text
        {"question": held[1].upper().replace(" ", "  "), "sys": None},  # exact once normalized
        {"question": "Say " + " ".join(held[2].split()[3:16]) + " please", "sys": None},  # 13 words
        {"question": "Say " + " ".join(held[2].split()[3:15]) + " please", "sys": None},  # 12: no
        {"question": "An unrelated prompt", "sys": None},
    ]
    train_source = write_jsonl(tmp_path / "t.jsonl", train_items)
    sources = [
        source(heldout_source, name="h", heldout_fraction=0.999),
        source(train_source, name="t", heldout_fraction=0.0, system="sys"),
    ]

    reports = check_sources(sources)
    index = heldout_index(sources)
    train = [r.messages[-1]["content"] for r in prompt_rows(sources[1], "train", index)]

    assert reports["h"].heldout == 3
    assert (reports["t"].contaminated, reports["t"].train) == (3, 2)
    assert train == [train_items[3]["question"], "An unrelated prompt"]


def test_contamination_counts_heldout_prompts_of_other_sources(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": _long(15, "x")}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "Say: " + _long(15, "x")}])
    sources = [source(a, name="a", heldout_fraction=0.99), source(b, name="b", heldout_fraction=0)]

    reports = check_sources(sources)

    assert reports["a"].heldout == 1
    assert (reports["b"].contaminated, reports["b"].train) == (1, 0)


def test_a_long_heldout_prompt_still_catches_a_long_shared_run(tmp_path: Path) -> None:
    held = _long(200, "long")
    words = held.split()
    h = write_jsonl(tmp_path / "h.jsonl", [{"question": held}])
    t = write_jsonl(tmp_path / "t.jsonl", [{"question": "Quote: " + " ".join(words[50:90])}])
    sources = [source(h, name="h", heldout_fraction=0.999), source(t, name="t", heldout_fraction=0)]

    reports = check_sources(sources)

    assert (reports["h"].heldout, reports["t"].contaminated) == (1, 1)


def test_a_training_row_that_asks_a_heldout_question_with_its_answer_is_dropped(
    tmp_path: Path,
) -> None:
    """A short held-out question (no 13-word run) asked as an earlier turn of a training chat,
    and answered there with its reference: the held-out answer would be in the student's input."""
    h = write_jsonl(tmp_path / "h.jsonl", [{"q": "Who rules Zeser?", "a": "Duke Saitur"}])

    def chat(*turns: tuple[str, str]) -> dict[str, Any]:
        return {"messages": [{"role": r, "content": c} for r, c in turns], "a": "x"}

    u, a = "user", "assistant"

    t = write_jsonl(
        tmp_path / "t.jsonl",
        [
            chat((u, "who  rules ZESER?"), (a, "duke saitur"), (u, "And Bitil?")),
            chat(("system", "Be brief."), (u, "Who rules Zeser?"), (a, "Duke Saitur"),
                 (u, "Thanks. Who rules Vemal?")),
            chat((u, "Who rules Zeser?"), (a, "I do not know"), (u, "Guess.")),
            chat((u, "Duke Saitur?"), (a, "Who rules Zeser?"), (u, "Hm.")),
            chat((u, "Who rules Bitil?"), (a, "Duke Saitur"), (u, "Ok.")),
            # the held-out item itself, asked last after another turn: its reference is the target
            chat((u, "Hello."), (a, "Hi."), (u, "WHO rules  zeser?")) | {"a": "duke saitur"},
            chat((u, "Hey."), (a, "Hi."), (u, "Who rules Zeser?")) | {"a": "Queen Zamain"},
        ],
    )  # fmt: skip
    sources = [
        SourceConfig(name="h", path=h, prompt="q", reference="a", heldout_fraction=0.999),
        SourceConfig(name="t", path=t, messages="messages", reference="a", heldout_fraction=0.0),
    ]

    reports = check_sources(sources)
    index = heldout_index(sources)
    kept = [r.messages[-1]["content"] for r in prompt_rows(sources[1], "train", index)]

    assert (reports["h"].heldout, reports["t"].contaminated, reports["t"].train) == (1, 3, 4)
    # kept: a wrong answer, swapped roles, another question, the question with another answer
    assert kept == ["Guess.", "Hm.", "Ok.", "Who rules Zeser?"]
