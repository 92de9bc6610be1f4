"""The server's side of the watermark: every answer of a key whose plan has one carries its
account's watermark (:func:`account_watermark`, asked once per request by the metering path,
which puts it on the request's sampling options)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr

from avocado_llm.billing.records import KeyInfo
from avocado_llm.protect.scheme import Watermark, account_key


@lru_cache(maxsize=4096)
def _key(secret: str, account_id: int) -> int:
    return account_key(secret, account_id)


def account_watermark(secret: SecretStr, key: KeyInfo) -> Watermark | None:
    """The account's watermark at its plan's strength; ``None`` when the plan turns it off."""
    delta = float(key.plan.watermark)
    if delta == 0:
        return None
    return Watermark(key=_key(secret.get_secret_value(), key.account_id), delta=delta)
