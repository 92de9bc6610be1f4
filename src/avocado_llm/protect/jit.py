"""numba for the CPU kernels of :mod:`avocado_llm.protect` (``rows.py``, ``gate.py``,
``draws.py``): ``compile_fn`` (``njit`` with its on-disk cache) and the scheme's hash,
compiled. Without numba (an odd platform) ``njit`` is None and ``mix`` is the Python one: the
tensor paths run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avocado_llm.protect.scheme import mix_int

try:  # numba is a dependency; without it (an odd platform) the tensor path runs everywhere
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba does not install
    njit = None


def compile_fn(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``numba.njit`` with its on-disk cache (next to the function's file, else the user's
    cache directory); without one (nowhere writable) compiled anew in each process."""
    assert njit is not None
    try:
        return njit(cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(**options)(fn)


mix: Callable[[int], int] = mix_int
"""The scheme's 31-bit hash on one integer (compiled and inlined where numba runs)."""
if njit is not None:
    mix = compile_fn(mix_int, inline="always")
