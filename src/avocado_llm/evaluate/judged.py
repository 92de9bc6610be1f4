"""Judged evaluation: on the held-out prompts of sources without a verifier, a judge compares
the student's answer with each teacher's.

Every pair of answers is asked twice, once with the student's answer as A and once as B, so a
judge that prefers a position (a common bias) cancels out: the student wins a prompt when the
two verdicts together favour it, loses when they favour the teacher, and ties otherwise (an
unreadable verdict counts as no preference). The judge is one of the recipe's teachers
(``eval.judge``, else ``fusion.judge_teacher``, else the first teacher) or any OpenAI-compatible
endpoint (``eval.judge_url`` + ``eval.judge_model``), told what a better answer is by
``eval.judge_rubric``.

Results go to ``report.json`` under ``"judged": {SOURCE: {TEACHER: {"win", "tie", "loss", "n",
"student", "judge"}}}``, recomputed whenever the student or that teacher is evaluated again.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from avocado_llm.config import Recipe
from avocado_llm.evaluate.report import REPORT_FILE, load_report, update_judged
from avocado_llm.evaluate.runner import EvalError
from avocado_llm.teachers import load_teacher
from avocado_llm.teachers.base import SamplingParams, Teacher
from avocado_llm.teachers.openai_compat import OpenAICompatTeacher

Verdict = Literal["A", "B", "tie"]
_VERDICT = re.compile(r"\b(A|B|[Tt][Ii][Ee])\b")
"""A verdict word: a capital A or B (a lowercase "a" is an article), or tie in any case."""
JUDGE_MAX_NEW_TOKENS = 8
"""A verdict is one word; a few tokens leave room for a leading space or a period."""


def parse_verdict(text: str) -> Verdict:
    """The first ``A``, ``B`` or ``tie`` in the judge's reply; anything else is ``tie``."""
    match = _VERDICT.search(text)
    if match is None or match.group(1).lower() == "tie":
        return "tie"
    return "A" if match.group(1) == "A" else "B"


def judge_messages(rubric: str, messages: list[dict[str, str]], a: str, b: str) -> list[dict]:
    """The judge's conversation for one ordered pair of answers."""
    turns = "\n".join(f"[{m['role']}] {m['content']}" for m in messages)
    user = (
        f"Prompt:\n{turns}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
        "Which answer is better? Reply with one word: A, B or tie."
    )
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def outcome(student_first: Verdict, teacher_first: Verdict) -> str:
    """``win``, ``tie`` or ``loss`` of the student from the verdicts of both orders (the
    student's answer is A in the first, B in the second)."""
    score = {"A": 1, "B": -1, "tie": 0}[student_first] - {"A": 1, "B": -1, "tie": 0}[teacher_first]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def make_judge(recipe: Recipe, device: str = "auto") -> tuple[str, Teacher]:
    """The recipe's judge and how the report names it."""
    cfg = recipe.eval
    if cfg.judge_url is not None:
        judge = OpenAICompatTeacher(
            "judge",
            cfg.judge_url,
            str(cfg.judge_model),
            api_key_env=cfg.judge_api_key_env,
            supports_logprobs=False,
            max_retries=recipe.harvest.max_retries,
            timeout_s=recipe.harvest.request_timeout_s,
        )
        return f"{cfg.judge_url}#{cfg.judge_model}", judge
    name = cfg.judge or recipe.fusion.judge_teacher or recipe.teachers[0].name
    teacher = next((t for t in recipe.teachers if t.name == name), None)
    if teacher is None:
        raise EvalError(f"eval.judge names no teacher of the recipe: {name!r}")
    return name, load_teacher(teacher, recipe, device)


def _answers(path: Path, sources: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """A model's answers to the prompts of ``sources``, by (source, prompt id)."""
    if not path.is_file():
        return {}
    rows = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("family") in sources:
                rows[(row["family"], row["id"])] = row
    return rows


def judged_student(models: dict[str, Any]) -> str | None:
    """The student the judge compares: the one named ``student``, else the first by name."""
    students = sorted(n for n, m in models.items() if m["role"] == "student")
    return "student" if "student" in students else (students[0] if students else None)


@dataclass(frozen=True)
class _Pair:
    source: str
    teacher: str
    messages: list[dict[str, str]]
    student_answer: str
    teacher_answer: str
    student_right: bool | None
    """On a verified source: whether the verifier accepts the student's answer rather than the
    teacher's (only pairs where exactly one is right are asked); None on an open source."""


def _pairs(
    eval_dir: Path, student: str, teachers: list[str], open_: set[str], verified: set[str]
) -> list[_Pair]:
    answers = eval_dir / "answers"
    mine = _answers(answers / f"{student}.jsonl", open_ | verified)
    pairs = []
    for teacher in teachers:
        theirs = _answers(answers / f"{teacher}.jsonl", open_ | verified)
        for key, row in mine.items():
            other = theirs.get(key)
            if other is None:
                continue
            marks = (row.get("correct"), other.get("correct"))
            if key[0] in open_ and marks[0] is None:
                right = None
            elif key[0] in verified and marks in ((True, False), (False, True)):
                right = marks[0]
            else:
                continue
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            pairs.append(_Pair(key[0], teacher, messages, row["answer"], other["answer"], right))
    return pairs


def judge_answers(
    recipe: Recipe, eval_dir: Path, name: str, role: str, device: str = "auto"
) -> int:
    """Judge the student against every teacher whose answers ``eval_dir`` holds, where model
    ``name`` (just evaluated, in ``role``; its answers written, its entry not yet) is one of
    the two, and write the counts to ``report.json``.

    On open sources this gives the win / tie / loss counts; on verified sources the judge is
    asked about the prompts where exactly one of the two answers passes the verifier, and its
    agreement with the verifier is reported (``judge_agreement``). Returns the number of judge
    requests made (two per compared prompt)."""
    open_ = {s.name for s in recipe.data.sources if s.verifier == "none"}
    verified = {s.name for s in recipe.data.sources if s.verifier != "none"}
    models = load_report(eval_dir)["models"] if (eval_dir / REPORT_FILE).is_file() else {}
    models = {**models, name: {"role": role}}
    student = judged_student(models)
    if student is None or not open_:
        return 0
    teachers = sorted(n for n, m in models.items() if m["role"] == "teacher")
    if name != student:
        teachers = [t for t in teachers if t == name]
    pairs = _pairs(eval_dir, student, teachers, open_, verified)
    if not pairs:
        return 0
    rubric = recipe.eval.judge_rubric
    conversations = []
    for p in pairs:
        conversations.append(judge_messages(rubric, p.messages, p.student_answer, p.teacher_answer))
        conversations.append(judge_messages(rubric, p.messages, p.teacher_answer, p.student_answer))
    judge_name, judge = make_judge(recipe, device)
    replies = asyncio.run(_ask(judge, conversations))
    judged: dict[str, dict[str, dict[str, Any]]] = {}
    checks: dict[str, dict[str, dict[str, Any]]] = {}
    for i, p in enumerate(pairs):
        result = outcome(parse_verdict(replies[2 * i]), parse_verdict(replies[2 * i + 1]))
        if p.student_right is None:
            counts = judged.setdefault(p.source, {}).setdefault(
                p.teacher,
                {"win": 0, "tie": 0, "loss": 0, "n": 0, "student": student, "judge": judge_name},
            )
            counts[result] += 1
            counts["n"] += 1
        else:
            check = checks.setdefault(p.source, {}).setdefault(p.teacher, {"agree": 0, "n": 0})
            check["agree"] += result == ("win" if p.student_right else "loss")
            check["n"] += 1
    update_judged(eval_dir, judged, checks)
    return len(conversations)


async def _ask(judge: Teacher, conversations: list[list[dict[str, str]]]) -> list[str]:
    params = SamplingParams(temperature=0.0, max_new_tokens=JUDGE_MAX_NEW_TOKENS, top_logprobs=0)
    try:
        completions = await judge.generate(conversations, params)
    finally:
        await judge.aclose()
    return [c[0].text if c else "" for c in completions]
