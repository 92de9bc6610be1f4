"""One error envelope for every failure: OpenAI's ``{"error": {message, type, param, code}}``.

Routes and serving code raise :class:`APIError` (or billing's ``BillingError``); the handlers
that :func:`install_error_handlers` registers on the app turn those, FastAPI's validation
errors, Starlette's HTTP errors (404, 405, 413) and anything unexpected into the envelope.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from avocado_llm.billing import BillingError

log = logging.getLogger("avocado.serve")

_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error envelope, as the OpenAPI document describes it."""

    error: ErrorDetail


_STATUSES = {
    400: "Invalid request: the message names the parameter and what to fix",
    401: "No API key, or an unknown, revoked or expired one",
    404: "Unknown model (or one this key may not call), or unknown route",
    409: "Idempotency-Key reused with another body, or its first request still runs",
    413: "Request body over the server's size cap",
    429: "Rate limit reached, or not enough credit",
    500: "Unexpected server error",
    502: "The upstream model server failed",
    503: "Temporarily unavailable: retry",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _STATUSES.items()
}
"""The error answers of every ``/v1`` operation, for the OpenAPI document."""
_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": _EVENT}},
        "description": "The answer; with ``stream``, server-sent events whose data are chunks "
        "(JSON) then ``[DONE]``",
    }
}
"""The 200 of the generating operations, which stream when asked."""


class APIError(Exception):
    """An answer other than 200, with the fields of OpenAI's envelope and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "")
        self.type = self.type or "invalid_request_error"
        self.code = code
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, Any]]:
        return envelope(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.envelope(), status_code=self.status, headers=self.headers)


def envelope(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, Any]]:
    """The body of every error answer."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    """404 for a model that does not exist *or* that this key may not call: one message, so
    that a key cannot probe which models exist (OpenAI answers the same way)."""
    return APIError(
        404,
        f"The model {model!r} does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register every exception handler; nothing leaves the app in another shape."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(BillingError, _billing_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _billing_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BillingError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Pydantic's errors → 400 naming the first offending parameter (``messages[0].role``);
    the errors of a union's alternatives (``stop``: a string, or a list) are joined."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return bad_request("invalid request").response()
    param = _param(errors[0].get("loc", ()))
    if errors[0].get("type") == "json_invalid":
        return bad_request("The request body is not valid JSON.").response()
    if errors[0].get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param).response()
    same = [e for e in errors if _param(e.get("loc", ())) == param]
    reasons = ", or: ".join(dict.fromkeys(str(e.get("msg", "invalid value")) for e in same))
    message = f"Invalid value for {param!r}: {reasons}" if param else reasons
    if errors[0].get("type") == "missing":
        message = f"Missing required parameter: {param!r}."
        if param is None:  # no body at all
            message = (
                "The request has no body: send a JSON object (Content-Type: application/json)."
            )
    elif "input" in errors[0]:
        message += f" (got {errors[0]['input']!r:.80})"
    if len(errors) > len(same):
        message += f" ({len(errors) - len(same)} more problem(s))"
    return bad_request(message, param=param).response()


def _param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``; union members and
    validator tags that pydantic puts in the location (``str``, ``list[str]``) are dropped."""
    parts = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif str(part).isidentifier() and part not in _TYPE_TAGS:
            parts.append(f".{part}")
    return "".join(parts).lstrip(".") or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        message = "The request body could not be read: send a JSON object encoded in UTF-8."
    else:
        message = str(exc.detail)
    error = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
    return error.response()


def loggable(text: str) -> str:
    """``text`` (a client's: a path, a method) as one field of a log line: percent-encoded
    like a URL, so that no control character, line separator, space or ``=`` of a client can
    start a forged line or field (``%0A2026-… key=key_…``), and nothing is lost."""
    return quote(text, safe="/:@!$&'()*+,;-._~", errors="backslashreplace")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception(
        "unhandled error on %s %s", loggable(request.method), loggable(request.url.path),
        exc_info=exc,
    )  # fmt: skip
    message = "The server had an error while processing your request; retry, or report it."
    return APIError(500, message, type="server_error").response()
