"""Billing errors, each carrying the fields of OpenAI's error envelope.

The HTTP layer turns any :class:`BillingError` into
``{"error": {"message", "type", "param", "code"}}`` with :attr:`BillingError.status`
(``err.envelope()`` builds the body), so the ledger decides *what* went wrong and the
server only decides *how* to say it.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base of every billing error; ``status``/``type``/``code`` follow OpenAI's envelope."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def envelope(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error body for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InsufficientCredit(BillingError):
    """The account's available balance does not cover the request's worst case."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class KeyRefused(BillingError):
    """The key is unknown, revoked or expired (also when it changed after the server last
    looked it up): 401."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Incorrect API key provided (unknown, revoked or expired). Check the key, or ask "
            "for a new one."
        )


class UnknownPrice(BillingError):
    """The model has no price, so it cannot be sold (the server answers 404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class IdempotencyConflict(BillingError):
    """The Idempotency-Key was already used with a different request body."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class IdempotencyInProgress(IdempotencyConflict):
    """The first request with this Idempotency-Key has not finished yet; retry later."""

    code = "idempotency_request_in_progress"


class HoldClosed(BillingError):
    """A hold was closed by someone else before its request was settled: another server
    process, starting up, released it as left open by a crash. Nothing was charged, so the
    answer must not be given; the client may retry (503)."""

    status = 503
    type = "server_error"
    code = "hold_released"


class NotFound(BillingError):
    """An admin command named an account, key or hold that does not exist."""

    status = 404
    code = "not_found"
