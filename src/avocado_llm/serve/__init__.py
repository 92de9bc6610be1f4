"""Serve: the model behind an OpenAI-compatible HTTP API that only paying keys can call.

    from avocado_llm.serve import ServeSettings, create_app
    app = create_app(ServeSettings(model_dir="zoo/qwen-tiny", secret="..."))

``app`` (factory), ``settings``, ``protocol`` (OpenAI shapes), ``routes/`` (one module per
endpoint), ``serving`` + ``metering`` (what a request may ask; hold → generate → settle),
``engine`` (the engine interface), ``local_engine`` + ``batching`` (in-process, dynamic
batching), ``upstream`` (any OpenAI-compatible server), ``ratelimit``, ``metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avocado_llm.serve.app import create_app
    from avocado_llm.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    """Imported on first use: ``avocado --help`` (which loads ``serve.command``) must not pay
    for FastAPI, torch and transformers."""
    if name == "create_app":
        from avocado_llm.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from avocado_llm.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
