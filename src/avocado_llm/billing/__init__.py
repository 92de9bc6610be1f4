"""Billing: API keys, prices, prepaid credit with holds, an exactly-once usage ledger, statements.

Money is integer micro-USD (``MICRO`` per USD). The server authenticates a key, places a
hold for a request's worst case, runs it, then settles the actual usage (or releases the
hold) — each step one transaction, so no concurrency or crash can overdraw an account or
charge a request twice::

    billing = Billing("sqlite:///avocado.db", secret)
    billing.migrate()
    key = billing.authenticate(api_key)            # KeyInfo | None
    hold = billing.hold(key, model, prompt_tokens, max_tokens, request_id)
    charge = billing.settle(hold, prompt_tokens, completion_tokens)

``avocado admin …`` (``billing.command``) manages accounts, credits, keys, prices and
statements.
"""

from avocado_llm.billing.errors import (
    BillingError,
    HoldClosed,
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientCredit,
    KeyRefused,
    NotFound,
    UnknownPrice,
)
from avocado_llm.billing.money import MICRO, Price, charge_for, format_usd, parse_usd
from avocado_llm.billing.records import Hold, KeyInfo, Plan
from avocado_llm.billing.service import Billing

__all__ = [
    "MICRO",
    "Billing",
    "BillingError",
    "Hold",
    "HoldClosed",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "InsufficientCredit",
    "KeyInfo",
    "KeyRefused",
    "NotFound",
    "Plan",
    "Price",
    "UnknownPrice",
    "charge_for",
    "format_usd",
    "parse_usd",
]
