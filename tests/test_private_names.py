"""A module's private names (``_name``) stay inside it (#20.4): no module of ``avocado_llm``
imports another's ``_name``, or reads ``module._name`` of a module it imported. What several
modules share is public, documented, and can be relied on; what is private may change."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "avocado_llm"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _reaches(path: Path, text: str | None = None) -> list[str]:
    """``file:line: what`` for every private name of another module this file uses."""
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text)
    where = path.relative_to(SRC.parent)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("avocado_llm"):
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(path, node)
            if not source.startswith("avocado_llm"):
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {source} import {alias.name}")
                elif (SRC.parent / source.replace(".", "/") / f"{alias.name}.py").exists():
                    modules.add(alias.asname or alias.name)  # a module imported by name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [line for path in sorted(SRC.rglob("*.py")) for line in _reaches(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_check_sees_a_private_import() -> None:
    """The check itself: a private import (absolute or relative) and a module's private
    attribute are found; a public name imported under a private alias is not."""
    text = (
        "from avocado_llm.config.fields import _show\nfrom .fields import _plain\n"
        "from avocado_llm.config import loader\nfrom avocado_llm.protect.jit import mix as _mix\n"
        "x = loader._read\n"
    )
    found = _reaches(SRC / "config" / "probe.py", text)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from avocado_llm.config.fields import _show",
        "from avocado_llm.config.fields import _plain",
        "loader._read",
    ]
