"""What ``GET /health`` says of the watermark: public, so it names where the mark is applied and,
in upstream mode, what the last probe found, never a key or the secret.

- ``"in-process"``: the in-process engine marks each answer with its account's key;
- ``"upstream-processor"``: the gateway sends each request's key to vLLM, whose logits processor
  marks the answer; ``watermark_probe`` says whether the last probe
  (:mod:`~avocado_llm.serve.upstream_probe`) found the processor (``loaded``), found vLLM
  without it (``missing``: watermarked requests get a 503) or got no answer (``unknown``),
  and when (UTC);
- ``"off"``: upstream mode with ``--no-upstream-watermark`` (nothing is marked).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from avocado_llm.serve.engine import Engine
from avocado_llm.serve.upstream import UpstreamEngine
from avocado_llm.serve.upstream_probe import Verdict

PROCESSOR_STATE = {Verdict.MARKS: "loaded", Verdict.MISSING: "missing", Verdict.UNKNOWN: "unknown"}


def watermark_health(engine: Engine) -> dict[str, Any]:
    """The watermark's part of ``/health`` for ``engine``."""
    if not isinstance(engine, UpstreamEngine):
        return {"watermark": "in-process"}
    if not engine.watermark:
        return {"watermark": "off"}
    guard = engine.guard
    at = guard.probed_at if guard is not None else None
    return {
        "watermark": "upstream-processor",
        "watermark_probe": {
            "processor": PROCESSOR_STATE[guard.verdict if guard is not None else Verdict.UNKNOWN],
            "at": None if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
        },
    }
