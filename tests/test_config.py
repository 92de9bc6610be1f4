"""Recipe loading: defaults, overrides, every problem reported at once, round-trips, docs."""

import dataclasses
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from avocado_llm.config import (
    Problem,
    Recipe,
    RecipeError,
    TeacherConfig,
    describe,
    field_docs,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
)

MINIMAL = """\
name: tiny
teachers:
  - name: qwen
    zoo: true
  - name: gemma
    zoo: true
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, overrides: list[str] | None = None) -> dict[str, Problem]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides)
    return {p.path: p for p in caught.value.problems}


def test_minimal_recipe_loads_with_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))

    assert recipe.name == "tiny"
    assert recipe.run_dir == Path("runs/tiny")
    assert recipe.world.families == [
        "arithmetic",
        "reverse",
        "facts",
        "counting",
        "sorting",
        "units",
    ]
    assert [t.path for t in recipe.teachers] == [Path("zoo/qwen"), Path("zoo/gemma")]
    assert recipe.teachers[0].kind == "local"
    assert recipe.harvest.top_logprobs == 20
    assert recipe.fusion.strategy == "verify"
    assert recipe.training.learning_rate == 1e-3
    assert recipe.eval.baselines == ["all"]
    assert recipe.serve.port == 8000


def test_input_paths_are_resolved_against_the_recipe_directory(tmp_path: Path) -> None:
    (tmp_path / "models" / "gemma").mkdir(parents=True)
    (tmp_path / "gemma.jinja").write_text("{{ messages }}")
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    path = write(
        recipe_dir,
        """\
        name: real
        teachers:
          - name: gemma
            path: ../models/gemma
            chat_template: ../gemma.jinja
        """,
    )

    teacher = load_recipe(path).teachers[0]

    assert teacher.path == recipe_dir.absolute() / "../models/gemma"
    assert teacher.path.is_dir()
    assert teacher.chat_template is not None and teacher.chat_template.is_file()


def test_overrides_are_applied_as_yaml_scalars(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, MINIMAL),
        [
            "training.learning_rate=3e-4",
            "harvest.samples_per_prompt=2",
            "harvest.temperature=0.7",
            "teachers[1].licence=gemma",
            "world.families=[arithmetic, facts]",
            "serve.host=0.0.0.0",
        ],
    )

    assert recipe.training.learning_rate == pytest.approx(3e-4)
    assert recipe.harvest.samples_per_prompt == 2
    assert recipe.teachers[1].licence == "gemma"
    assert recipe.world.families == ["arithmetic", "facts"]
    assert recipe.serve.host == "0.0.0.0"


def test_bad_overrides_are_reported_with_the_rest(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, MINIMAL),
        ["training.learning_rate", "teachers[5].model=x", "training.learnin_rate=1e-4"],
    )

    assert set(problems) == {"overrides[0]", "overrides[1]", "training.learnin_rate"}
    assert "key=value" in problems["overrides[0]"].fix
    assert "no item 5" in problems["overrides[1]"].message
    assert "learning_rate" in problems["training.learnin_rate"].fix


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: broken
        teachers:
          - name: qwen
            zoo: true
            chat_template: templates/missing.jinja
          - name: api
            kind: openai
            model: gpt-4o-mini
            api_key_env: sk-abcdef0123456789
          - kind: local
            zoo: true
        harvest:
          top_p: 1.5
        training:
          learnin_rate: 3.0e-4
          steps: many
        fusion:
          strategy: single:nobody
        serve:
          port: 70000
        """,
    )

    with pytest.raises(RecipeError) as caught:
        load_recipe(path)

    problems = {p.path: p for p in caught.value.problems}
    assert set(problems) == {
        "teachers[0].chat_template",
        "teachers[1].base_url",
        "teachers[1].api_key_env",
        "teachers[2].name",
        "harvest.top_p",
        "training.learnin_rate",
        "training.steps",
        "fusion.strategy",
        "serve.port",
    }
    assert problems["training.learnin_rate"].message == "unknown key"
    assert problems["training.learnin_rate"].fix == "did you mean 'learning_rate'?"
    assert "expected int, got str 'many'" in problems["training.steps"].message
    assert problems["teachers[2].name"].message == "missing required field"
    assert "(0, 1]" in problems["harvest.top_p"].message
    assert "1.5" in problems["harvest.top_p"].message
    assert "missing.jinja" in problems["teachers[0].chat_template"].message
    assert "needs base_url" in problems["teachers[1].base_url"].message
    assert "looks like a key" in problems["teachers[1].api_key_env"].message
    assert "sk-abcdef0123456789" not in str(caught.value)  # never echo a secret back
    assert "qwen, api" in problems["fusion.strategy"].fix
    assert "65535" in problems["serve.port"].fix
    text = str(caught.value)
    assert text.startswith(f"{path}: 9 problems:\n")
    assert "  - training.learnin_rate: unknown key. Fix: did you mean 'learning_rate'?" in text


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "serve:\n  zzz: 1\n"))

    assert "host, port, model_name" in problems["serve.zzz"].fix


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "name: tiny\nteachers:\n  - name: [qwen\n"))

    (problem,) = problems.values()
    assert "YAML syntax error at line" in problem.message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "seed: 1\nseed: 2\n"))

    (problem,) = problems.values()
    assert "duplicate key 'seed'" in problem.message
    assert "line 8" in problem.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    problems = problems_of(write(tmp_path, text))

    assert "expected a mapping of Recipe keys" in problems["(recipe)"].message


def test_missing_recipe_file_is_a_recipe_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.yaml")

    assert "cannot read it" in problems["(recipe)"].message


def test_bool_is_not_an_int_and_yes_is_not_a_bool(tmp_path: Path) -> None:
    text = MINIMAL + "seed: true\ntraining:\n  learning_rate: false\n"
    text = text.replace(
        "zoo: true\n  - name: gemma", "zoo: true\n    keep_reasoning: yes\n  - name: gemma"
    )
    problems = problems_of(write(tmp_path, text))

    assert set(problems) == {"seed", "training.learning_rate", "teachers[0].keep_reasoning"}
    assert "expected int, got bool True" in problems["seed"].message
    assert "expected float, got bool False" in problems["training.learning_rate"].message
    assert "expected bool, got str 'yes'" in problems["teachers[0].keep_reasoning"].message


def test_ints_are_accepted_as_floats_and_exponents_without_a_dot_parse(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(
            tmp_path,
            MINIMAL + "harvest:\n  request_timeout_s: 30\ntraining:\n  learning_rate: 3e-4\n",
        )
    )

    assert recipe.harvest.request_timeout_s == 30.0
    assert isinstance(recipe.harvest.request_timeout_s, float)
    assert recipe.training.learning_rate == pytest.approx(3e-4)


def test_literal_choices_suggest_the_close_one(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "training:\n  kd_loss: jsdd\n"))

    assert problems["training.kd_loss"].fix == "did you mean 'jsd'?"


def test_cross_field_checks(tmp_path: Path) -> None:
    text = """\
        name: My Run
        teachers:
          - name: qwen
            zoo: true
          - name: qwen
            path: nowhere
        fusion:
          strategy: judge
        student:
          hidden_size: 65
        eval:
          baselines: [all, single:ghost, votes]
        """
    problems = problems_of(write(tmp_path, text))

    assert set(problems) == {
        "name",
        "teachers[1].name",
        "teachers[1].path",
        "fusion.judge_teacher",
        "student.hidden_size",
        "eval.baselines[1]",
        "eval.baselines[2]",
    }
    assert problems["name"].fix == "use e.g. 'my-run'"
    assert "duplicate" in problems["teachers[1].name"].message
    assert "vote" in problems["eval.baselines[2]"].fix


def test_recipe_round_trips_through_a_dict_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "models" / "q").mkdir(parents=True)
    path = write(
        tmp_path,
        MINIMAL
        + """\
  - name: local
    path: models/q
    licence: apache-2.0
  - name: api
    kind: openai
    base_url: http://127.0.0.1:9/v1
    model: m
    api_key_env: OPENAI_API_KEY
fusion:
  strategy: single:api
training:
  learning_rate: 3e-4
""",
    )
    recipe = load_recipe(path)

    data = recipe_to_dict(recipe)
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(data)), base_dir=tmp_path / "elsewhere")

    assert again == recipe
    assert recipe_to_dict(again) == data
    assert data["teachers"][2]["path"] == str(tmp_path.absolute() / "models/q")


def test_recipe_from_dict_reports_problems(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict({"name": "x"}, base_dir=tmp_path)

    assert [p.path for p in caught.value.problems] == ["teachers"]
    assert "missing required field" in str(caught.value)


def _schema_classes(cls: type) -> list[type]:
    """``cls`` and every dataclass reachable through its fields."""
    found = [cls]
    for tp in typing.get_type_hints(cls).values():
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner) and inner not in found:
                found += _schema_classes(inner)
    return found


def test_every_field_has_a_docstring() -> None:
    classes = _schema_classes(Recipe)
    assert TeacherConfig in classes and len(classes) >= 13  # data, sources, teacher options

    for cls in classes:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name, "").strip(), f"{cls.__name__}.{f.name} has no docstring"


def test_describe_lists_every_field_with_type_default_and_doc() -> None:
    text = describe(Recipe)

    assert "teachers[].api_key_env: str | None = None" in text
    assert "training.kd_loss: 'forward_kl' | 'reverse_kl' | 'jsd' = 'forward_kl'" in text
    assert "name: str (required)" in text
    assert "Peak learning rate" in text
    assert text.count("\n    ") >= sum(len(dataclasses.fields(c)) for c in _schema_classes(Recipe))


def test_extends_starts_from_another_recipe(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL + "training:\n  steps: 77\n  batch_size: 4\n", "base.yaml")
    child = write(
        tmp_path,
        """\
        extends: base.yaml
        name: child
        training:
          steps: 5
        harvest:
          from_run: tiny
        """,
        "child.yaml",
    )
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert [t.name for t in recipe.teachers] == ["qwen", "gemma"]  # inherited
    assert (recipe.training.steps, recipe.training.batch_size) == (5, 4)  # merged key by key
    assert recipe.run_dir == recipe.output_dir / "child"
    assert recipe.harvest_dir == recipe.output_dir / "tiny" / "harvest"
    assert load_recipe(tmp_path / "base.yaml").harvest_dir == recipe.output_dir / "tiny" / "harvest"


def test_extends_loops_and_bad_from_run_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\n" + MINIMAL, "a.yaml")
    write(tmp_path, "extends: a.yaml\n" + MINIMAL, "b.yaml")
    assert "loop" in problems_of(tmp_path / "a.yaml")["extends"].message
    missing = write(tmp_path, "extends: nowhere.yaml\n" + MINIMAL, "c.yaml")
    assert "cannot read it" in str(problems_of(missing))
    bad = write(tmp_path, MINIMAL + "harvest:\n  from_run: ../elsewhere\n", "d.yaml")
    assert "bad run name" in problems_of(bad)["harvest.from_run"].message


# --- data.sources (issue #21) -----------------------------------------------------------------


def test_data_sources_load_with_defaults_and_paths_beside_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "support.jsonl").write_text("{}\n")
    recipe = load_recipe(
        write(
            tmp_path,
            MINIMAL
            + "world:\n  families: []\n"
            + "data:\n  sources:\n    - {name: support, path: data/support.jsonl, prompt: q}\n",
        )
    )

    (source,) = recipe.data.sources
    assert source.path == tmp_path.absolute() / "data" / "support.jsonl"
    assert (source.verifier, source.heldout_fraction, source.on_error) == ("none", 0.2, "fail")
    assert source.messages is None and source.limit is None and source.system is None
    assert recipe.world.families == []


def test_data_section_problems_are_all_reported(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.txt").write_text("x\n")
    found = problems_of(
        write(
            tmp_path,
            MINIMAL
            + textwrap.dedent("""\
            data:
              sources:
                - {name: a, path: a.jsonl, prompt: q, messages: m, verifier: numbr}
                - {name: a, path: a.jsonl, verifier: "regex:([0-9]", heldout_fraction: 1.0}
                - {name: arithmetic, path: missing.parquet, prompt: q, limit: 0}
                - {name: "b c", path: b.txt, prompt: q, on_error: ignore, max_prompt_tokens: 0}
                - {name: e, path: a.jsonl, prompt: q, verifier: "regex:"}
            """),
        )
    )

    assert "both messages and prompt" in found["data.sources[0].prompt"].message
    assert "did you mean 'number'" in found["data.sources[0].verifier"].fix
    assert "no prompt column" in found["data.sources[1].messages"].message
    assert "bad pattern" in found["data.sources[1].verifier"].message
    assert "must be in [0, 1)" in found["data.sources[1].heldout_fraction"].message
    assert "duplicate source name 'a'" in found["data.sources[1].name"].message
    assert "also a task family" in found["data.sources[2].name"].message
    assert "no such file" in found["data.sources[2].path"].message
    assert "must be >= 1" in found["data.sources[2].limit"].message
    assert "unknown format '.txt'" in found["data.sources[3].path"].message
    assert "bad source name" in found["data.sources[3].name"].message
    assert "is not one of 'fail', 'skip'" in found["data.sources[3].on_error"].message
    assert "must be >= 1" in found["data.sources[3].max_prompt_tokens"].message
    assert "needs a pattern" in found["data.sources[4].verifier"].message


def test_a_recipe_needs_families_or_sources(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, MINIMAL + "world:\n  families: []\n"))

    assert "no task families and no data sources" in found["world.families"].message
    assert "data.sources" in found["world.families"].fix


def test_a_teachers_max_n_is_at_least_one(tmp_path: Path) -> None:
    text = MINIMAL.replace("    zoo: true\n", "    zoo: true\n    max_n: 0\n", 1)
    assert "teachers[0].max_n" in problems_of(write(tmp_path, text))
    assert load_recipe(write(tmp_path, text.replace("max_n: 0", "max_n: 1"))).teachers[0].max_n == 1
