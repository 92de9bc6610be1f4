"""The server's side of the watermark: every answer of a key whose plan has one carries its
account's watermark (:func:`with_watermark`, called once per request by the metering path)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from pydantic import SecretStr

from avocado_llm.billing.records import KeyInfo
from avocado_llm.protect.scheme import Watermark, account_key
from avocado_llm.serve.engine import SamplingOptions


@lru_cache(maxsize=4096)
def _key(secret: str, account_id: int) -> int:
    return account_key(secret, account_id)


def with_watermark(options: SamplingOptions, secret: SecretStr, key: KeyInfo) -> SamplingOptions:
    """``options`` with the account's watermark at the plan's strength (unchanged when the
    plan turns it off)."""
    delta = float(key.plan.watermark)
    if delta == 0:
        return options
    mark = Watermark(key=_key(secret.get_secret_value(), key.account_id), delta=delta)
    return replace(options, watermark=mark)
