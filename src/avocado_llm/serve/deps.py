"""Dependencies of the routes, as ``Annotated`` aliases: the app's services and the caller's key.

Every route under ``/v1`` depends on :func:`authenticate` through its router, so a new route is
refused to anonymous callers unless it is deliberately put elsewhere (deny by default).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from avocado_llm.billing import KeyInfo, KeyRefused
from avocado_llm.serve.errors import APIError
from avocado_llm.serve.serving import Services

# Query parameters where clients put keys; a key there is refused (URLs end up in logs).
_KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token"})
_KEY_PREFIX = "avk_"


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(request: Request, services: ServicesDep) -> KeyInfo:
    """The caller's key from ``Authorization: Bearer avk_...``, or 401."""
    for name, value in request.query_params.multi_items():
        if name.lower() in _KEY_PARAMS or value.startswith(_KEY_PREFIX):
            raise _unauthorized(
                "API keys are not accepted in the URL (URLs end up in logs). Send the key in "
                "the header 'Authorization: Bearer avk_...' and revoke the one you exposed.",
                "invalid_api_key",
            )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(
            "You didn't provide an API key. Provide it in an Authorization header using Bearer "
            "auth (Authorization: Bearer avk_...).",
            None,
        )
    paid = request.method == "POST"  # its hold checks the key again, in the ledger
    digest = services.billing.key_digest(token) if paid else ""
    info = services.keys.get(digest) if paid else None
    if info is None:
        info = await services.ledger(services.billing.authenticate, token)
        if info is not None and paid:
            services.keys.put(digest, info)
    if info is None:
        raise KeyRefused
    request.state.key_id = info.key_id  # for the access log: the id, never the key
    return info


def _unauthorized(message: str, code: str | None) -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


KeyDep = Annotated[KeyInfo, Depends(authenticate)]
