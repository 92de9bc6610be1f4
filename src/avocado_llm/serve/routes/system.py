"""``GET /health`` and ``GET /metrics``: public, and saying nothing about keys or accounts."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from avocado_llm.serve.deps import ServicesDep
from avocado_llm.telemetry.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, str]:
    """200 once the app has started (the model is loaded before the server listens)."""
    return {"status": "ok", "model": services.engine.model}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
