"""``avocado eval`` end to end: a zoo teacher, then a second model into the same report, and
mistakes that end with exit code 1 and a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avocado_llm import cli
from avocado_llm.evaluate import check_report
from avocado_llm.world.corpus import count_params

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["arithmetic", "reverse", "facts", "counting", "sorting", "units"]


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The demo recipe, run from the repository root, writing into ``tmp_path``."""
    monkeypatch.chdir(ROOT)
    return ["eval", "recipes/tiny.yaml", "--set", f"output_dir={tmp_path}", "--device", "cpu"]


def test_eval_a_zoo_teacher_then_a_student(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*tiny, "--model", "zoo/qwen-tiny", "--n", "10"]) == 0
    printed = capsys.readouterr().out
    assert "qwen-tiny (teacher, 533,056 params)" in printed and "overall" in printed
    eval_dir = tmp_path / "tiny" / "eval"
    report = json.loads((eval_dir / "report.json").read_text())
    assert check_report(report) == []
    entry = report["models"]["qwen-tiny"]
    assert entry["role"] == "teacher"
    assert entry["params"] == count_params(ROOT / "zoo" / "qwen-tiny")
    assert list(entry["families"]) == FAMILIES
    assert all(s["n"] == 10 for s in entry["families"].values())
    answers = (eval_dir / "answers" / "qwen-tiny.jsonl").read_text().splitlines()
    assert len(answers) == 60
    assert set(json.loads(answers[0])) == {"id", "family", "prompt", "gold", "answer", "correct"}
    for name in ("report.md", "report.html", "accuracy.png"):
        assert (eval_dir / name).stat().st_size > 0

    # Another model joins the same report: here the gemma teacher posing as a student.
    args = ["--model", "zoo/gemma-tiny", "--n", "4", "--name", "student-x", "--role", "student"]
    assert cli.main([*tiny, *args]) == 0
    assert "student beats every teacher: " in capsys.readouterr().out
    models = json.loads((eval_dir / "report.json").read_text())["models"]
    assert models["qwen-tiny"] == entry and models["student-x"]["role"] == "student"
    md = (eval_dir / "report.md").read_text()
    head = "| model | role | " + " | ".join(FAMILIES) + " | overall | params |"
    assert head in md
    assert any(line.startswith("| qwen-tiny | teacher | ") for line in md.splitlines())
    assert any(line.startswith("| student-x | student | ") for line in md.splitlines())
    assert "student beats every teacher: " in md
    assert "**" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "zoo/qwen-tiny", "--name", "a/b"], "bad model name 'a/b'"),
        (["--model", "zoo/qwen-tiny", "--name", "mine"], "pass --role teacher|student|baseline"),
        (["--model", "zoo/nothing", "--role", "baseline"], "no Hugging Face model in zoo/nothing"),
        (["--url", "http://127.0.0.1:9/v1"], "--served-model"),
        (["--model", "zoo/qwen-tiny", "--n", "0"], "at least 1, got 0"),
        (["--model", "zoo/qwen-tiny", "--set", "eval.batch_size=0"], "batch_size"),
    ],
)
def test_mistakes_are_reported(
    tiny: list[str], tmp_path: Path, args: list[str], message: str, capsys
) -> None:
    assert cli.main([*tiny, *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "eval" / "report.json").exists()


def test_a_local_model_takes_no_endpoint_flags(tiny: list[str], capsys) -> None:
    assert cli.main([*tiny, "--model", "zoo/qwen-tiny", "--served-model", "x"]) == 2
    assert "go with --url only" in capsys.readouterr().err


def test_an_endpoint_of_the_recipe_is_named_after_its_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("AVOCADO_UNSET_KEY", raising=False)
    recipe = tmp_path / "endpoint.yaml"
    recipe.write_text(
        "name: endpoint\n"
        "teachers:\n"
        "  - {name: qwen3-1.7b, kind: openai, base_url: 'http://127.0.0.1:9/v1',\n"
        "     model: Qwen/Qwen3-1.7B, api_key_env: AVOCADO_UNSET_KEY}\n"
    )
    args = ["eval", str(recipe), "--set", f"output_dir={tmp_path}"]
    args += ["--url", "http://127.0.0.1:9/v1", "--served-model", "Qwen/Qwen3-1.7B"]
    assert cli.main([*args, "--api-key-env", "AVOCADO_UNSET_KEY"]) == 1
    # The key is checked before any request: the error names the recipe's teacher.
    assert "teacher 'qwen3-1.7b': environment variable AVOCADO_UNSET_KEY" in capsys.readouterr().err


def test_the_recipes_served_student_needs_no_role(
    tiny: list[str], tmp_path: Path, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`avocado eval RECIPE --url URL --served-model M`: M is the recipe's own student when it is
    the name the recipe serves it under (serve.model_name), so its role is `student`; any other
    model that is not one of the recipe's teachers needs --role, as the help says."""
    from endpoint_server import EndpointOptions, serve_teacher  # conftest: on sys.path

    from avocado_llm.teachers.hf import LocalTeacher

    monkeypatch.setenv("AVOCADO_TEST_EVAL_KEY", "sk-eval-role-0123456789")
    teacher = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=1)
    options = EndpointOptions(model="avocado-tiny", api_key="sk-eval-role-0123456789")
    with serve_teacher(teacher, options) as server:
        endpoint = ["--url", server.base_url, "--api-key-env", "AVOCADO_TEST_EVAL_KEY", "--n", "1"]
        assert cli.main([*tiny, *endpoint, "--served-model", "avocado-tiny"]) == 0
        assert "avocado-tiny (student, endpoint)" in capsys.readouterr().out
        assert server.requests == len(FAMILIES)
        assert cli.main([*tiny, *endpoint, "--served-model", "someone-else"]) == 1
        assert "pass --role teacher|student|baseline" in capsys.readouterr().err
    models = json.loads((tmp_path / "tiny" / "eval" / "report.json").read_text())["models"]
    assert {name: m["role"] for name, m in models.items()} == {"avocado-tiny": "student"}
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "required unless" in " ".join(capsys.readouterr().out.split())
