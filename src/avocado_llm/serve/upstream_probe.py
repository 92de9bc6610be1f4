"""Whether the upstream runs Avocado's watermark processor.

vLLM started without ``--logits-processors avocado_watermark.vllm:WatermarkLogitsProcessor``
accepts any ``vllm_xargs`` and serves unmarked text: nothing in its answers tells. So the
gateway asks it, cheaply: a one-token completion whose ``vllm_xargs`` carries a watermark
argument the processor refuses (:data:`PROBE_XARGS`). With the processor, vLLM answers 400 with
the processor's own words (:data:`REFUSAL`) and generates nothing; without it, it answers.

- at start-up (``avocado serve`` and the app's lifespan): an upstream that answered refuses
  the start (:data:`MISSING`);
- every :data:`PROBE_EVERY_S` while serving, and again before the next watermarked request
  after the upstream broke off a connection (a restart?): once found without the processor,
  each watermarked request is refused with a 503 before its answer begins (never served
  unmarked, never charged) until a probe finds the processor again;
- ``GET /health`` tells the last probe's finding and its time (:mod:`~avocado_llm.serve.health`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from typing import Any

import aiohttp
from avocado_watermark.xargs import PREFIX, from_xargs

from avocado_llm.serve.engine import EngineError

log = logging.getLogger("avocado.serve.upstream")

PROBE_XARGS: dict[str, Any] = {PREFIX + "probe": 1}
"""A watermark argument no processor accepts: an unknown name."""


def _refusal() -> str:
    try:
        from_xargs(PROBE_XARGS)
    except ValueError as e:
        return str(e)
    raise AssertionError("avocado_watermark accepts the probe's arguments")  # pragma: no cover


REFUSAL = _refusal()
"""What the processor says of :data:`PROBE_XARGS` (vLLM's 400 carries it)."""

PROCESSOR = "avocado_watermark.vllm:WatermarkLogitsProcessor"
MISSING = (
    "the upstream does not run Avocado's watermark processor; start vLLM with "
    f"--logits-processors {PROCESSOR} or pass --no-upstream-watermark"
)
PROBE_EVERY_S = 30.0
"""How often a serving gateway asks again."""


class Verdict(enum.Enum):
    MARKS = "the upstream runs the watermark processor"
    MISSING = "the upstream does not run the watermark processor"
    UNKNOWN = "the upstream did not answer the probe"


def is_probe(body: Any) -> bool:
    """Whether a forwarded body is the probe (tests that record bodies leave it out)."""
    return isinstance(body, dict) and body.get("vllm_xargs") == PROBE_XARGS


async def probe(session: aiohttp.ClientSession, base_url: str, model: str) -> Verdict:
    """Ask the upstream at ``base_url`` (``…/v1``) once."""
    body = {"model": model, "prompt": "probe", "max_tokens": 1, "temperature": 0.0,
            "vllm_xargs": PROBE_XARGS}  # fmt: skip
    url = base_url.rstrip("/") + "/completions"
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as r:
            raw = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("watermark probe of %s: no answer (%s)", url, type(e).__name__)
        return Verdict.UNKNOWN
    message = _message(raw)
    if status == 400 and REFUSAL in message:
        return Verdict.MARKS
    if 200 <= status < 300 or status in (400, 422):
        # it generated (the argument unread), or it refused vllm_xargs as such (not vLLM)
        said = "" if status < 300 else f" ({message:.300})"
        log.error("watermark probe of %s answered %d%s: %s", url, status, said, MISSING)
        return Verdict.MISSING
    log.warning("watermark probe of %s answered %d: %.300s", url, status, message)
    return Verdict.UNKNOWN


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:2000].decode("utf-8", "replace")


class WatermarkGuard:
    """What the gateway knows of the upstream's processor, kept current by probes; a
    watermarked request passes :meth:`require` before it is forwarded."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str) -> None:
        self.verdict = Verdict.UNKNOWN
        self.probed_at: float | None = None
        """When the last probe finished (Unix time; ``None`` before the first)."""
        self._args = (session, base_url, model)
        self._lock = asyncio.Lock()
        self._probes = 0  # probes finished (a waiter reuses one that finished while it waited)

    async def check(self) -> Verdict:
        """Probe now (one probe at a time) and keep the verdict."""
        seen = self._probes
        async with self._lock:
            if self._probes != seen:
                return self.verdict
            verdict = await probe(*self._args)
            if verdict is not self.verdict:
                (log.info if verdict is Verdict.MARKS else log.error)("%s", verdict.value)
            self.verdict = verdict
            self.probed_at = time.time()
            self._probes += 1
            return verdict

    def forget(self) -> None:
        """The upstream broke off (maybe restarted, maybe otherwise): ask before the next
        watermarked request."""
        if self.verdict is Verdict.MARKS:
            self.verdict = Verdict.UNKNOWN

    def refuse_if_missing(self) -> None:
        """Raise the 503 now (before an answer begins) if the processor is known missing."""
        if self.verdict is Verdict.MISSING:
            raise EngineError(
                "This server cannot watermark its answers right now (its model server runs "
                "without the watermark processor); retry later.",
                503,
                "watermark_unavailable",
            )

    async def require(self) -> None:
        """Return if a watermarked request may be forwarded, else raise a 503; asks the
        upstream first when its processor is not known."""
        if self.verdict is Verdict.UNKNOWN:
            await self.check()
        self.refuse_if_missing()
        if self.verdict is not Verdict.MARKS:
            raise EngineError(
                "The model server could not be reached; retry later.", 503, "upstream_unavailable"
            )

    async def watch(self, every_s: float) -> None:
        """Probe every ``every_s`` for as long as the server runs."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:  # a probe must never end the watch
                log.exception("watermark probe failed")
