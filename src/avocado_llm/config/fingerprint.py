"""Fingerprints: what made a stage's output, so that a changed recipe is never answered with it.

A fingerprint is a flat ``{"dotted.field": value}`` dict of the recipe fields that decide a
stage's output and the digests of its inputs (keys ``input:<what>``). A stage writes it beside
its output; before reusing that output it compares the fingerprint it would write now with the
stored one, and :func:`changes` says what differs (``training.learning_rate: 0.001 → 0.01``).
Pure data: no files, no models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


class StaleError(RuntimeError):
    """An output was made with other settings or inputs than the ones asked for now."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and scalars are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def pick(recipe: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The dotted ``fields`` (sections or single fields) of a recipe dict, flattened."""
    flat = flatten(recipe)
    out: dict[str, Any] = {}
    for name in fields:
        out.update({k: v for k, v in flat.items() if k == name or k.startswith(f"{name}.")})
    return out


def digest(data: Any) -> str:
    """``sha256:`` of the canonical JSON of ``data``."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def normalise(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(fingerprint), default=str))


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(not recorded)"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


_MISSING = object()


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """``"field: old → new"`` for every field that differs; empty when they match."""
    if old is None:
        return ["no record of the settings that made it (written by an older Avocado)"]
    old, new = normalise(old), normalise(new)
    return [
        f"{key}: {_show(old.get(key, _MISSING))} → {_show(new.get(key, _MISSING))}"
        for key in sorted(set(old) | set(new))
        if old.get(key, _MISSING) != new.get(key, _MISSING)
    ]


def summary(lines: list[str], limit: int = 12) -> str:
    """The changes on one line each (indented), at most ``limit`` of them."""
    shown = lines[:limit] + ([f"… and {len(lines) - limit} more"] if len(lines) > limit else [])
    return "".join(f"\n  {line}" for line in shown)
