"""The web console, served by ``avocado serve`` under ``/console``.

Customers (``/console/``) see their balance, usage (charts, table, CSV), keys (create, shown
once; revoke), monthly statements (HTML printable to PDF, CSV, JSON) and prices; operators
(``/console/admin``) see accounts and add credit with a reason, keys across accounts, prices,
open holds, and requests and errors per minute.

Server-rendered Jinja2 templates (autoescaped); charts drawn by Chart.js, vendored unmodified
in ``static/vendor`` (no CDN, no build step); a strict Content-Security-Policy (scripts and
styles only from the console's own files). Sign-in uses console credentials made with
``avocado admin console-user create``, never API keys; see ``auth`` for sessions and CSRF.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from avocado_llm.console import admin, customer
from avocado_llm.console.auth import Refused, send_refusal
from avocado_llm.console.rates import RateSampler
from avocado_llm.console.views import PREFIX, redirect, secure

STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
}


def _static_files() -> dict[str, bytes]:
    """Every shipped static file, read once: only these names are ever served."""
    root = resources.files("avocado_llm.console") / "static"
    files: dict[str, bytes] = {}

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif any(child.name.endswith(ext) for ext in STATIC_TYPES):
                files[prefix + child.name] = child.read_bytes()

    walk(root, "")
    return files


def build_router() -> APIRouter:
    static = _static_files()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = RateSampler(app.state.services.metrics)
        app.state.console_rates = sampler
        task = asyncio.create_task(sampler.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    router = APIRouter(prefix=PREFIX, include_in_schema=False, lifespan=lifespan)

    @router.get("/static/{name:path}")
    async def console_static(name: str) -> Response:
        body = static.get(name)
        if body is None:
            return secure(Response("not found", status_code=404, media_type="text/plain"))
        ext = name[name.rfind(".") :]
        response = Response(body, media_type=STATIC_TYPES[ext])
        response.headers["Cache-Control"] = "public, max-age=300"
        return secure(response)

    @router.get("")
    async def console_root() -> Response:
        return redirect(f"{PREFIX}/")

    router.include_router(admin.router)
    router.include_router(customer.router)
    return router


def install_console(app: FastAPI) -> None:
    """Mount the console on an app made by ``serve.create_app`` (uses ``app.state.services``)."""
    app.state.console_rates = RateSampler(app.state.services.metrics)  # replaced at start-up
    app.add_exception_handler(Refused, send_refusal)  # a route's dependency said no
    app.include_router(build_router())


__all__ = ["install_console"]
