"""Reading an untrusted HTTP answer: its body under a byte cap, its error message (redacted),
its Retry-After."""

from __future__ import annotations

import json
from typing import Any

import httpx

from avocado_llm.teachers.redact import redact

ERROR_BODY_BYTES = 64 << 10
"""An error answer is read up to this much (the rest is dropped)."""


class TooBig(Exception):
    """The body went (or said it would go) past its byte cap."""


async def read_capped(response: httpx.Response, cap: int, truncate: bool = False) -> bytes:
    """The body, at most ``cap`` bytes (decoded): past it, a :class:`TooBig`, or (``truncate``)
    the first ``cap`` bytes. A Content-Length over the cap is refused before any byte is read."""
    length = response.headers.get("content-length", "")
    if not truncate and length.isdigit() and int(length) > cap:
        raise TooBig(f"the answer is {int(length)} bytes long, over the cap of {cap}")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if truncate:
                break
            raise TooBig(f"the answer went past the cap of {cap} bytes")
    return b"".join(chunks)[:cap]


def error_message(raw: bytes) -> str:
    """The server's own words: OpenAI's envelope, FastAPI's ``detail``, or the raw text.
    Some servers echo the key they refused, or the request's headers: it is redacted."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    message: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("detail") or data.get("message")
    text = str(message) if message else text
    return redact(text)[:500]


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: the backoff alone decides
        return None
