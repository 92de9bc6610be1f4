"""What the ledger hands to the server: an authenticated key, its plan, and a placed hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Plan:
    """Per-key caps that make extracting the closed model expensive (anti-distillation)."""

    name: str = "default"
    """A label shown in admin output."""
    max_tokens: int = 512
    """The largest ``max_tokens`` a request may ask for (and the default when it asks none)."""
    max_n: int = 1
    """The largest ``n`` (choices per request)."""
    logprobs: bool = False
    """Whether ``logprobs`` may be requested at all; off by default for a closed model."""
    max_top_logprobs: int = 0
    """The largest ``top_logprobs`` when ``logprobs`` is allowed."""
    watermark: float = 3.0
    """Strength of the keyed watermark on this key's answers (the logit bias of green tokens,
    see ``avocado_llm.protect``); 0 turns it off. On by default: answers can be traced."""
    tools: bool = True
    """Whether requests may offer the model tools to call (``tools``, ``tool_choice``)."""
    structured_outputs: bool = True
    """Whether requests may ask for JSON answers (``response_format`` ``json_object`` or
    ``json_schema``)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Plan:
        """Tolerant of fields added or removed since the row was written."""
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated API key: who pays, what it may call, and its limits."""

    key_id: str
    """Public id of the key (``key_…``), safe to log; never the secret itself."""
    account_id: int
    account: str
    """The paying account's name."""
    models: tuple[str, ...] | None
    """Models this key may call; ``None`` means all priced models."""
    rpm: int | None
    """Requests per minute; ``None`` means unlimited."""
    tpm: int | None
    """Tokens per minute; ``None`` means unlimited."""
    plan: Plan


@dataclass(frozen=True)
class Hold:
    """Credit set aside for one request's worst case, until it is settled or released."""

    id: str
    account_id: int
    key_id: str
    model: str
    amount: int
    """Micro-USD taken from the available balance (the worst-case charge)."""
    request_id: str
