"""Loading recipes from YAML files or dicts (with overrides and path resolution), and saving."""

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from avocado_llm.config.fields import (
    INVALID,
    ROOT,
    Build,
    Problem,
    RecipeError,
    YamlLoader,
    build_dataclass,
    check_tree,
    plain,
    show,
    yaml_problem,
)
from avocado_llm.config.schema import Recipe


def _resolve_paths(recipe: Recipe, base_dir: Path) -> None:
    """Input files are relative to the recipe's directory; zoo teachers live in world.zoo_dir."""

    def beside(path: Path) -> Path:
        return path if path.is_absolute() else base_dir / path

    for teacher in recipe.teachers:
        if teacher.zoo and teacher.path is None:
            teacher.path = recipe.world.zoo_dir / teacher.name
        elif teacher.path is not None and not teacher.zoo:
            teacher.path = beside(teacher.path)
        if teacher.chat_template is not None:
            teacher.chat_template = beside(teacher.chat_template)
    if recipe.student.init_from is not None:
        recipe.student.init_from = beside(recipe.student.init_from)
    for source in recipe.data.sources:
        if isinstance(source.path, Path):
            source.path = beside(source.path)


def _recipe(data: Any, base_dir: Path, b: Build) -> Recipe:
    recipe = build_dataclass(Recipe, data, "", b)
    if recipe is not INVALID:
        _resolve_paths(recipe, Path(base_dir).absolute())
        check_tree(recipe, "", b, [p.path for p in b.problems])
    # Group the problems by section, in schema order (a stable sort keeps the order within one).
    order = {f.name: i for i, f in enumerate(dataclasses.fields(Recipe))}
    b.problems.sort(key=lambda p: order.get(re.split(r"[.\[]", p.path)[0], -1))
    return recipe


def _apply_override(data: dict[str, Any], text: str, where: str, b: Build) -> None:
    """Set one ``dotted.key=value`` override in ``data``; list items are ``teachers[0].model``."""
    key, sep, raw = text.partition("=")
    keys = key.strip().replace("[", ".").replace("]", "").split(".")
    if not sep or not all(keys):
        b.add(where, f"bad override {text!r}", "write key=value, e.g. training.learning_rate=3e-4")
        return
    try:
        value = yaml.load(raw, Loader=YamlLoader)
    except yaml.YAMLError as error:
        b.add(where, f"bad override {text!r}: {yaml_problem(error).message}", "quote the value")
        return
    node: Any = data
    for i, k in enumerate(keys):
        at = ".".join(keys[:i])
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                fix = f"use an index from 0 to {len(node) - 1}"
                b.add(where, f"bad override {text!r}: {at} has no item {k}", fix)
                return
            k = int(k)
        elif not isinstance(node, dict):
            b.add(where, f"bad override {text!r}: {at} is {show(node)}", "override a key inside it")
            return
        elif i < len(keys) - 1 and node.get(k) is None:
            node[k] = {}
        if i == len(keys) - 1:
            node[k] = value
        node = node[k]


def _merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _read(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    """A recipe file's data, with ``extends: OTHER.yaml`` (relative to it) merged underneath."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YamlLoader)
    except OSError as error:
        fix = "check the path; recipes live in recipes/, e.g. recipes/tiny.yaml"
        raise RecipeError(
            str(path), [Problem(ROOT, f"cannot read it: {error.strerror}", fix)]
        ) from error
    except yaml.YAMLError as error:
        raise RecipeError(str(path), [yaml_problem(error)]) from error
    if not isinstance(data, dict) or "extends" not in data:
        return data
    parent = data.pop("extends")
    if not isinstance(parent, str):
        fix = "write extends: tiny.yaml (a path relative to this recipe)"
        raise RecipeError(str(path), [Problem("extends", f"is {show(parent)}", fix)])
    base = (path.parent / parent).resolve()
    if base in chain or base == path.resolve():
        fix = "a recipe cannot extend itself, directly or through others"
        raise RecipeError(str(path), [Problem("extends", f"{parent!r} makes a loop", fix)])
    return _merge(_read(base, (*chain, path.resolve())), data)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing everything wrong.

    ``extends: OTHER.yaml`` at the top of a recipe starts from that recipe: mappings are merged
    key by key, lists and values are replaced."""
    path = Path(path)
    data = _read(path)
    b = Build()
    for i, text in enumerate(overrides or []):
        if isinstance(data, dict):
            _apply_override(data, text, f"overrides[{i}]", b)
    recipe = _recipe(data, path.parent, b)
    if b.problems:
        raise RecipeError(str(path), b.problems)
    return recipe


def recipe_from_dict(data: dict[str, Any], *, base_dir: Path) -> Recipe:
    """Validate an already-parsed recipe; relative input paths are resolved against base_dir."""
    b = Build()
    recipe = _recipe(data, base_dir, b)
    if b.problems:
        raise RecipeError(f"recipe in {base_dir}", b.problems)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain YAML-ready data; ``recipe_from_dict`` gives the same recipe back."""
    return plain(recipe)


def load_recipe_or_report(path: str | Path, overrides: list[str] | None = None) -> Recipe | None:
    """For commands: the recipe, or ``None`` after printing every problem to stderr."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as e:
        print(str(e), file=sys.stderr)
        return None
