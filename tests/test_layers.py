"""Imports flow downward: no module of ``src/avocado_llm`` imports a folder above its layer.

The layers are written out once, in :data:`BELOW` (each floor names the floors directly under
it; a floor may import everything under it, transitively, and its own modules). Every module
is parsed (``ast``, nothing is imported) and each ``import avocado_llm.X`` /
``from avocado_llm.X import ...`` / relative import is checked against its floor. Imports
inside functions and ``if TYPE_CHECKING:`` blocks count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "avocado_llm"

TOP = "top"
"""The recipes that compose the stages: ``run.py``, ``cli.py``, ``demo.py``, the zoo build."""
TOP_MODULES = ("__init__", "cli", "run", "demo", "zoo")

BELOW: dict[str, tuple[str, ...]] = {
    # The ML stages, bottom to top: config → data sources and verifiers (``data/``, and the
    # tiny world: one source) → the local-model component → teachers → harvest → fusion →
    # distill → evaluate.
    "config": (),
    "world": ("config",),
    "models": ("world",),
    "teachers": ("models",),
    "harvest": ("teachers",),
    "fusion": ("harvest",),
    "distill": ("fusion",),
    "evaluate": ("distill",),
    # The service: billing (its Alembic scripts on the same floor) and protect below serve,
    # console below serve; what serve shares with protect or console lives below them all
    # (telemetry). Protect's suspect check asks teachers; serve runs the local-model component.
    "telemetry": (),
    "billing": ("config",),
    "protect": ("billing", "teachers"),
    "console": ("billing", "telemetry"),
    "serve": ("protect", "console", "telemetry", "models"),
    # The top may use every stage and the service; nothing imports it.
    TOP: ("evaluate", "serve"),
    # Helpers for tests and benchmarks (throwaway PostgreSQL, Redis): no production module
    # imports them, so no floor above lists this one.
    "testing": (),
}
SAME_FLOOR = {"migrations": "billing", "data": "world"}
"""Packages that belong to another's floor: the ledger's migrations import its schema; your own
prompt data (``data/``) and the tiny world are both prompt sources with their verifiers."""

KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()
"""(module, imported floor) pairs tolerated for now, each with the issue that removes it."""


@cache
def allowed(floor: str) -> frozenset[str]:
    """The floors ``floor`` may import: itself and everything under it."""
    out = {floor}
    for lower in BELOW[floor]:
        out |= allowed(lower)
    return frozenset(out)


def floor_of(parts: tuple[str, ...]) -> str:
    """The floor of a module given as its path inside the package (``("distill", "train")``)."""
    head = parts[0]
    return TOP if head in TOP_MODULES else SAME_FLOOR.get(head, head)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[str, ...]]:
    """Every ``avocado_llm`` module ``path`` imports, as its parts inside the package."""
    module = path.relative_to(root).with_suffix("").parts
    package = module if module[-1] == "__init__" else module[:-1]
    package = tuple(p for p in package if p != "__init__")
    found: list[tuple[str, ...]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = [["avocado_llm", *base, *(node.module.split(".") if node.module else [])]]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")]
        else:
            continue
        for name in names:
            if name[0] == "avocado_llm" and len(name) > 1:
                found.append(tuple(name[1:]))
    return found


def forbidden_imports(root: Path = PACKAGE) -> list[str]:
    """One line per import of a floor above the importing module's own."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root).with_suffix("").parts
        floor = floor_of(module)
        assert floor in BELOW, f"{path}: package {floor!r} has no floor in BELOW; add it"
        for target in imported_modules(path, root):
            target_floor = floor_of(target)
            where = "/".join(module) + ".py"
            if target_floor in allowed(floor) or (where, target_floor) in KNOWN_EXCEPTIONS:
                continue
            problems.append(f"{where} ({floor}) imports avocado_llm.{'.'.join(target)}")
    return problems


def test_no_module_imports_a_floor_above_its_own() -> None:
    problems = sorted(set(forbidden_imports()))
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_service_stays_out_of_the_ml_stages() -> None:
    """The rules the issue names, checked against :data:`BELOW` itself."""
    ml = ("config", "world", "models", "teachers", "harvest", "fusion", "distill", "evaluate")
    for stage in ml:
        assert not allowed(stage) & {"serve", "billing", "console", "protect", "testing", TOP}
    for side in ("protect", "console", "billing"):
        assert "serve" not in allowed(side)
    assert not any("testing" in allowed(f) for f in BELOW if f != "testing")
    assert "world" not in allowed("config")


def test_the_checker_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    """Upward arrows hidden in a function, a relative import or a TYPE_CHECKING block are
    found; downward ones and the migrations' import of the ledger are not reported."""
    root = tmp_path / "avocado_llm"
    (root / "world").mkdir(parents=True)
    (root / "migrations").mkdir()
    (root / "world" / "tasks.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from avocado_llm.config import schema\n"
        "if TYPE_CHECKING:\n    from avocado_llm.serve.engine import SamplingOptions\n"
        "def f():\n    from ..distill import train\n    import avocado_llm.zoo\n"
    )
    (root / "migrations" / "env.py").write_text("from avocado_llm.billing import schema\n")
    assert sorted(forbidden_imports(root)) == [
        "world/tasks.py (world) imports avocado_llm.distill",
        "world/tasks.py (world) imports avocado_llm.serve.engine",
        "world/tasks.py (world) imports avocado_llm.zoo",
    ]
