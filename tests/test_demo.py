"""`avocado demo`'s calls: one held-out question per family, greedy, each answer printed with its
gold answer and ✔/✘ — and the same answers on a second run (the issue: "52" on one run and "53"
on the next, because the demo sampled at temperature 1 under a fresh watermark key each time).

The shipped zoo's qwen-tiny stands in for a trained student (a real `avocado serve` process, the
official openai client, a real ledger); it is right on some families and wrong on others, so
both marks are exercised.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from avocado_llm.demo import DemoCall, demo, demo_secret, heldout_calls
from avocado_llm.world.tasks import FAMILIES, get_family

LINE = re.compile(r"^  ([✔✘]) (\w+)\s+ (.+)  →  (.*)  \(gold (.+)\)$")


def _call_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("  ✔ ", "  ✘ "))]


def test_demo_answers_are_greedy_checked_and_the_same_twice(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = heldout_calls(list(FAMILIES), seed=0)
    assert [c.family for c in calls] == list(FAMILIES)
    assert [(c.prompt, c.gold) for c in calls] == [
        (ex.prompt, ex.answer) for f in FAMILIES for ex in get_family(f).generate("heldout", 1)
    ]
    secret = demo_secret(tmp_path)
    assert demo_secret(tmp_path) == secret  # kept: the watermark's key is the same next time
    assert (tmp_path / "demo" / "secret").stat().st_mode & 0o777 == 0o600

    runs = []
    for _ in range(2):
        result = demo(zoo_dir / "qwen-tiny", "qwen-tiny", calls, secret=secret, accuracy=0.5)
        runs.append((result, _call_lines(capsys.readouterr().out)))
    (first, lines), (second, again) = runs
    assert lines == again and first["calls"] == second["calls"]  # the same answers, run after run
    assert len(lines) == len(calls)
    for line, call, got in zip(lines, calls, first["calls"], strict=True):
        m = LINE.match(line)
        assert m, line
        mark, family, prompt, answer, gold = m.groups()
        assert (family, prompt, gold) == (call.family, call.prompt, call.gold)
        assert answer == got["answer"].strip()
        right = get_family(family).verify(got["answer"], gold)
        assert mark == ("✔" if right else "✘") and got["correct"] is right
    marks = {line[2] for line in lines}
    assert marks == {"✔", "✘"}  # qwen-tiny knows reverse, not facts: both marks show
    assert first["charge_usd"] > 0
    assert abs(first["balance_usd"] - (5 - first["charge_usd"])) < 1e-9


def test_a_users_own_prompt_has_no_gold_to_check() -> None:
    call = DemoCall("Sort: 3 1 2")
    assert call.verdict("1 2 3") is None
    assert DemoCall("Sort: 3 1 2", "1 2 3", "sorting").verdict("1, 2, 3") is True
    assert DemoCall("Sort: 3 1 2", "1 2 3", "sorting").verdict("3 2 1") is False
