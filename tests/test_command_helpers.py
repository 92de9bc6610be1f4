"""The recipe commands share one helper (#20.1, ``avocado_llm.config.cli``) and each stage one
recipe-level entry point (#20.2): every recipe command takes RECIPE and ``--set KEY=VALUE`` and
reports a bad recipe the same way; ``avocado run`` and ``avocado fuse`` both fuse through
``fuse_recipe``, so the stage's wiring exists once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from avocado_llm.cli import build_parser, main
from avocado_llm.config.cli import EXIT_INTERRUPTED, fail, report_errors

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "tiny.yaml")
RECIPE_COMMANDS = [
    ["run"],
    ["harvest"],
    ["fuse"],
    ["distill"],
    ["eval", "--model", "zoo/qwen-tiny"],
    ["demo"],
    ["recipe", "check"],
]


@pytest.mark.parametrize("command", RECIPE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_recipe_command_takes_the_recipe_and_overrides(command: list[str]) -> None:
    args = build_parser().parse_args([*command, RECIPE, "--set", "seed=3", "--set", "name=x"])
    assert args.recipe == Path(RECIPE)
    assert args.set == ["seed=3", "name=x"]


@pytest.mark.parametrize("command", RECIPE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_recipe_command_reports_a_bad_override_alike(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 1, every problem of the recipe listed, no traceback, nothing run."""
    code = main([*command, RECIPE, "--set", "seed=many", "--set", "nonsense"])
    err = capsys.readouterr().err
    assert code == 1
    assert "tiny.yaml: 2 problems" in err and "seed" in err and "bad override 'nonsense'" in err
    assert "Traceback" not in err


def test_report_errors_turns_listed_errors_and_ctrl_c_into_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def raising(error: BaseException) -> int:
        raise error

    assert report_errors(lambda: 0, (ValueError,)) == 0
    assert report_errors(lambda: raising(ValueError("no such file x")), (ValueError,)) == 1
    assert capsys.readouterr().err == "error: no such file x\n"
    interrupted = report_errors(
        lambda: raising(KeyboardInterrupt()), (ValueError,), interrupted="interrupted: rerun"
    )
    assert interrupted == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: rerun\n"
    with pytest.raises(KeyError):  # an error not listed is a bug: it is not hidden
        report_errors(lambda: raising(KeyError("x")), (ValueError,))
    assert fail("bad flags", 2) == 2
    assert capsys.readouterr().err == "error: bad flags\n"


def _called(path: Path) -> set[str]:
    """The names of the functions ``path`` calls (``f(...)`` and ``module.f(...)``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


@pytest.mark.parametrize("module", ["run.py", "fusion/command.py"])
def test_run_and_the_fuse_command_fuse_through_fuse_recipe(module: str) -> None:
    called = _called(ROOT / "src" / "avocado_llm" / module)
    assert "fuse_recipe" in called
    assert not called & {"fuse", "write_fused", "load_teacher", "recipe_records"}
