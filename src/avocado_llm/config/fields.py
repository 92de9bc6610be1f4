"""The generic recipe machinery: problems, the YAML loader, the type-driven converter and the
field documentation. Nothing here knows the recipe's schema (that is ``schema.py``).

Conversion is driven by the type hints alone, so a new field needs only a type, a default and a
docstring on the line below it. A dataclass may define ``check(self) -> list[Check]`` for rules
that involve values (ranges) or several fields; checks run once the whole tree is built.
"""

import ast
import dataclasses
import difflib
import inspect
import itertools
import re
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

Check = tuple[str, str, str]
"""A problem found by ``check()``: (path relative to the checked dataclass, message, fix)."""

ROOT = "(recipe)"  # Problem.path of problems about the file as a whole
INVALID: Any = object()  # what a failed conversion returns; its problem is already recorded


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe."""

    path: str
    """Where: the key's dotted path, e.g. ``teachers[1].api_key_env``."""
    message: str
    """What is wrong, with the value that was given."""
    fix: str
    """What to do about it."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}. Fix: {self.fix}"


class RecipeError(ValueError):
    """Everything wrong with a recipe, reported together."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  - {p}" for p in problems))


# --- YAML -------------------------------------------------------------------------------------


class YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars (``3e-4`` is a float; ``yes``/``no``/``on`` stay strings)
    that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
YamlLoader.add_implicit_resolver(  # checked after int, so "10" stays an int
    _FLOAT_TAG,
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.inf$"),
    list("-+0123456789."),
)


def yaml_problem(error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    reason = getattr(error, "problem", None) or str(error)
    fix = "fix the YAML there: indentation, a ':' after each key, matching quotes and brackets"
    return Problem(ROOT, f"YAML syntax error{where}: {reason}", fix)


# --- generic conversion -----------------------------------------------------------------------


@dataclass
class Build:
    """The problems found so far in one recipe."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, path: str, message: str, fix: str) -> Any:
        self.problems.append(Problem(path or ROOT, message, fix))
        return INVALID


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and not key.startswith("[") else path + key


def show(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", type(None): "null"}.get(type(value))
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return kind if value is None else f"{kind or type(value).__name__} {text}"


def did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


_HOW_TO_WRITE = {
    int: "write a whole number, e.g. 32",
    float: "write a number, e.g. 0.001",
    bool: "write true or false",
    str: "write text; quote it if YAML reads it as something else, e.g. '123'",
    Path: "write a path, e.g. models/teacher",
    list: "write a list, e.g. [a, b], or one '- item' per line",
    dict: "write 'key: value' lines indented under it",
}


def _is_a(value: Any, tp: Any) -> bool:
    if isinstance(value, bool):  # YAML's true is a Python int; never let it pass as a number
        return tp is bool
    if tp is float:
        return isinstance(value, int | float)
    if tp is Path:
        return isinstance(value, str) and value != ""
    return isinstance(value, get_origin(tp) or tp)


def _convert(value: Any, tp: Any, path: str, b: Build) -> Any:
    """``value`` (as parsed from YAML) as a ``tp``, or INVALID once the problem is noted."""
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, b)
    if origin in (Union, types.UnionType):  # only `X | None` is supported
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, path, b)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        choices = ", ".join(repr(a) for a in args)
        fix = did_you_mean(str(value), [str(a) for a in args]) or f"use one of {choices}"
        return b.add(path, f"{show(value)} is not one of {choices}", fix)
    if not _is_a(value, tp):
        return b.add(
            path, f"expected {_type_name(tp)}, got {show(value)}", _HOW_TO_WRITE[origin or tp]
        )
    if origin is list:
        items = [_convert(v, args[0], f"{path}[{i}]", b) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in items) else items
    if origin is dict:
        entries = {str(k): _convert(v, args[1], _join(path, str(k)), b) for k, v in value.items()}
        return INVALID if any(v is INVALID for v in entries.values()) else entries
    return Path(value).expanduser() if tp is Path else float(value) if tp is float else value


def build_dataclass(cls: type, data: Any, path: str, b: Build) -> Any:
    """An instance of dataclass ``cls`` from a YAML mapping, every bad key noted in ``b``."""
    if not isinstance(data, dict):
        fix = "write its keys as 'key: value' lines (see `avocado recipe explain`)"
        return b.add(path, f"expected a mapping of {cls.__name__} keys, got {show(data)}", fix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            fix = (
                did_you_mean(str(key), list(fields)) or f"remove it; keys here: {', '.join(fields)}"
            )
            b.add(_join(path, str(key)), "unknown key", fix)
    hints, values = get_type_hints(cls), {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name in data:
            values[name] = _convert(data[name], hints[name], _join(path, name), b)
        elif required:
            doc = field_docs(cls)[name].split("\n")[0]
            fix = f"add {name}: {_type_name(hints[name])} ({doc.rstrip('.')})"
            b.add(_join(path, name), "missing required field", fix)
        # A bad or missing value gets the default (or an empty one) so that checks can still run.
        if values.get(name, INVALID) is INVALID:
            values.pop(name, None)
            if required:
                values[name] = {str: "", list: []}.get(get_origin(hints[name]) or hints[name])
    return cls(**values)


def _related(a: str, b: str) -> bool:
    """Whether one path is the other or lies inside it."""
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((short + ".", short + "["))


def check_tree(obj: Any, path: str, b: Build, reported: list[str]) -> None:
    """Run ``check()`` on every dataclass in the tree, children first. A check's problem is
    dropped where a conversion problem was already reported on that key, or around it."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if dataclasses.is_dataclass(item):
                check_tree(item, _join(path, f.name) + ("" if i is None else f"[{i}]"), b, reported)
    if not hasattr(obj, "check"):
        return
    for where, message, fix in obj.check():
        if not any(_related(_join(path, where), p) for p in reported):
            b.add(_join(path, where), message, fix)


def check_range(
    obj: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> list[Check]:
    """A problem if ``obj.name`` lies outside the range; open ends exclude the bound."""
    value = getattr(obj, name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return []
    if high is None:
        rule = f"{'>' if low_open else '>='} {low}"
    elif low is None:
        rule = f"{'<' if high_open else '<='} {high}"
    else:
        rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return [(name, f"must be {rule}, got {value!r}", f"set {name} to a value {rule}")]


# --- documentation ----------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring (the string literal on the line below a field) of each field."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def describe(cls: type, prefix: str = "") -> str:
    """A readable reference of ``cls``: each field's path, type, default and docstring."""
    lines = [] if prefix else [f"{cls.__name__}: {inspect.getdoc(cls)}", ""]
    docs, hints = field_docs(cls), get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = get_args(tp)[0] if get_origin(tp) is list else None
        section = (
            tp if dataclasses.is_dataclass(tp) else item if dataclasses.is_dataclass(item) else None
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            default = " (required)"
        elif section is None:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = f" = {plain(value)!r}"
        else:
            default = ""
        lines += [
            f"{prefix}{f.name}: {_type_name(tp)}{default}",
            textwrap.indent(docs[f.name], "    "),
        ]
        if section is not None:
            lines += ["", describe(section, f"{prefix}{f.name}{'[]' if item else ''}."), ""]
    return "\n".join(lines)


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value
