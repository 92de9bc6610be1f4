"""A recipe teacher with a ``prompt_template`` (a base model, such as real-small's Gemma-3-270M)
is evaluated as it was harvested: through its template and stop strings, not a chat template
it does not have (before: ``avocado run`` stopped at its evaluation, "no chat template")."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from avocado_llm.config import recipe_from_dict
from avocado_llm.config.teacher_options import PromptTemplate
from avocado_llm.evaluate.evaluation import ModelSource, eval_fingerprint, evaluate_model
from avocado_llm.teachers.base import SamplingParams
from avocado_llm.teachers.hf import LocalTeacher

TEMPLATE = {"prefix": "Answer in a word.\n\nQ: 1 + 1?\nA: 2\n\n", "user": "Q: {content}\nA:",
            "stop": ["\n", "Q:"]}  # fmt: skip


def _base_model(zoo_dir: Path, tmp_path: Path) -> Path:
    """A zoo model without its chat template: a base model."""
    path = tmp_path / "base"
    shutil.copytree(zoo_dir / "qwen-tiny", path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_a_templated_teacher_is_evaluated_through_its_template(
    zoo_dir: Path, tmp_path: Path
) -> None:
    model = _base_model(zoo_dir, tmp_path)
    teacher = {"name": "base", "path": str(model), "engine": "vllm", "licence": "apache-2.0",
               "prompt_template": TEMPLATE}  # fmt: skip
    recipe = recipe_from_dict(
        {"name": "templated", "output_dir": str(tmp_path / "runs"),
         "world": {"families": ["arithmetic"]}, "teachers": [teacher],
         "eval": {"max_new_tokens": 8, "batch_size": 4}},
        base_dir=tmp_path,
    )  # fmt: skip
    # in process (through its vLLM server: tests/teachers/test_vllm_launch.py)
    done = evaluate_model(recipe, ModelSource(path=model), n=4, device="cpu", in_process=True)
    assert done.name == "base" and done.entry["role"] == "teacher"
    assert done.entry["params"] > 0  # a local teacher: its size is known
    rows = [json.loads(line) for line in done.answers_path.read_text().splitlines()]
    assert len(rows) == 4

    # the same greedy answers as the in-process teacher asked through the template
    direct = LocalTeacher("base", model, device="cpu", prompt_template=PromptTemplate(**TEMPLATE))
    params = SamplingParams(temperature=0.0, max_new_tokens=8, top_logprobs=0)
    messages = [[{"role": "user", "content": row["prompt"]}] for row in rows]
    answers = asyncio.run(direct.generate(messages, params))
    assert [row["answer"] for row in rows] == [a.text.strip() for [a] in answers]
    assert not any("\n" in row["answer"] or "Q:" in row["answer"] for row in rows)

    # how it is asked is part of its scores' fingerprint
    other = recipe_from_dict(
        {"name": "templated", "output_dir": str(tmp_path / "runs"),
         "world": {"families": ["arithmetic"]},
         "teachers": [teacher | {"prompt_template": TEMPLATE | {"prefix": ""}}]},
        base_dir=tmp_path,
    )  # fmt: skip
    source = ModelSource(path=model)
    assert eval_fingerprint(recipe, source, 4, True) != eval_fingerprint(other, source, 4, True)
    assert eval_fingerprint(recipe, source, 4) != eval_fingerprint(other, source, 4)  # served
