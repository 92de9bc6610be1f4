"""The app factory: everything the server holds is built here, from settings.

    app = create_app(ServeSettings(model_dir="zoo/qwen-tiny", secret="..."))

Routes under ``/v1`` need a key (their router depends on ``authenticate``); ``/health``,
``/metrics`` and ``/openapi.json`` are public; ``/console`` is the web console (its
own sign-in); anything else is a 404 in OpenAI's envelope.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.concurrency import run_in_threadpool

from avocado_llm.billing import Billing
from avocado_llm.console import install_console
from avocado_llm.serve.deps import authenticate
from avocado_llm.serve.engine import Engine
from avocado_llm.serve.errors import ERROR_RESPONSES, install_error_handlers
from avocado_llm.serve.local_engine import LocalEngine
from avocado_llm.serve.middleware import AccessLog, BodyLimit
from avocado_llm.serve.ratelimit import Limiter, RateLimiter
from avocado_llm.serve.ratelimit_redis import RedisRateLimiter
from avocado_llm.serve.routes import chat, completions, models, responses, system
from avocado_llm.serve.serving import KeyCache, Services
from avocado_llm.serve.settings import ServeSettings
from avocado_llm.serve.upstream import UpstreamEngine
from avocado_llm.telemetry.metrics import Metrics

log = logging.getLogger("avocado.serve")


def build_engine(settings: ServeSettings) -> Engine:
    """The engine the settings describe: upstream when a URL is given, else in process."""
    if settings.upstream_url is not None:
        key = settings.upstream_api_key
        return UpstreamEngine(
            settings.upstream_url,
            model_name=settings.served_name,
            upstream_model=settings.upstream_model,
            api_key=key.get_secret_value() if key is not None else None,
            timeout_s=settings.upstream_timeout_s,
            tokenizer_dir=settings.model_dir,
            watermark=settings.upstream_watermark,
        )
    assert settings.model_dir is not None  # the settings' validator guarantees one of them
    return LocalEngine(
        settings.model_dir,
        model_name=settings.served_name,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        threads=settings.threads,
    )


def create_app(
    settings: ServeSettings, engine: Engine | None = None, billing: Billing | None = None
) -> FastAPI:
    """The server. ``engine`` and ``billing`` default to the ones ``settings`` describe; the
    app starts and stops only what it built itself (tests may share one engine)."""
    owns_engine, owns_billing = engine is None, billing is None
    if billing is None:
        secret = settings.secret.get_secret_value()
        if not secret:
            raise ValueError("set AVOCADO_SECRET: API keys are checked as HMACs under it")
        billing = Billing(settings.database_url, secret)
    engine = engine if engine is not None else build_engine(settings)
    metrics = Metrics()
    if isinstance(engine, LocalEngine):
        engine.on_batch = metrics.observe_batch
    limiter: Limiter = RedisRateLimiter(settings.redis_url) if settings.redis_url else RateLimiter()
    services = Services(
        settings, engine, billing, limiter, metrics, keys=KeyCache(settings.key_cache_s)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if billing.single_writer:  # made in the serving event loop (its waiters belong to it)
            services.ledger_limiter = anyio.CapacityLimiter(1)
        if settings.manage_ledger_on_start:
            await run_in_threadpool(services.billing.migrate)
            # Only holds of servers gone (lease run out, or process dead): never a live one's.
            released = await run_in_threadpool(
                services.billing.release_stale_holds, settings.stale_hold_after_s
            )
            if released:
                log.warning("released %d hold(s) left open by an earlier crash", released)
        lease = services.billing.server_lease(settings.lease_s, settings.stale_hold_after_s)
        await run_in_threadpool(lease.start)
        services.lease = lease
        try:
            await services.engine.start()
            yield
        finally:
            if owns_engine:
                await services.engine.aclose()
            services.lease = None
            await run_in_threadpool(lease.close)  # holds still open: the next sweep's
            if owns_billing:
                services.billing.close()
            services.limiter.close()

    app = FastAPI(
        title="Avocado",
        summary="An OpenAI-compatible API for a model sold per call.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=metrics, model=engine.model)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=ERROR_RESPONSES)
    for module in (models, chat, completions, responses):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(system.router)
    install_console(app)  # the web console under /console
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` (one app per worker process): settings from ``AVOCADO_*``."""
    return create_app(ServeSettings())
