"""ASGI middleware: a cap on request bodies, and an access log that never shows a key.

uvicorn's own access log prints the query string, where a careless client may have put its
key; the server turns that log off and writes this one: method, path, status, time, key id,
the client's fields percent-encoded (a path with a newline cannot write a line of its own).
"""

from __future__ import annotations

import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avocado_llm.serve.errors import envelope, loggable
from avocado_llm.telemetry.metrics import Metrics

access_log = logging.getLogger("avocado.serve.access")


class BodyLimit:
    """413 for bodies over ``max_bytes``: at once when ``Content-Length`` says so, else as
    soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"").decode()
        if length.isdigit() and int(length) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, _message(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _message(max_bytes: int) -> str:
    return f"The request body is larger than {max_bytes} bytes; send a smaller request."


async def _too_large(send: Send, max_bytes: int) -> None:
    body = json.dumps(envelope(_message(max_bytes), "invalid_request_error")).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """One log line and one metrics count per answered request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, model: str) -> None:
        self.app = app
        self.metrics = metrics
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            # The endpoint function's name: bounded, unlike paths such as /v1/models/{anything}.
            endpoint = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self.metrics.requests.labels(endpoint, self.model, str(status)).inc()
            key_id = str(scope.get("state", {}).get("key_id", "-"))
            # Every field a client could shape is escaped: one request, one line, 5 fields.
            access_log.info(
                "%s %s %d %.1fms key=%s", loggable(scope["method"]), loggable(scope["path"]),
                status, (time.perf_counter() - started) * 1000, loggable(key_id),
            )  # fmt: skip
