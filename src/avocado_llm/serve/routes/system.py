"""``GET /health`` and ``GET /metrics``: public, and saying nothing about keys or accounts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from avocado_llm.serve.deps import ServicesDep
from avocado_llm.serve.health import watermark_health
from avocado_llm.telemetry.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """200 once the app has started (the model is loaded before the server listens), with
    where the watermark is applied and, upstream, whether vLLM's processor was found
    (:mod:`~avocado_llm.serve.health`)."""
    return {"status": "ok", "model": services.engine.model} | watermark_health(services.engine)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
