"""What a customer may give the keys they make in the console: at most what the operator allows.

An account's *key limits* (:class:`KeyLimits`: models, requests and tokens per minute, the
plan's caps, a date by which keys must expire) are the ceiling of every key made in the
console for it. The operator sets them (`avocado admin accounts create … / accounts limits`);
an account without them (one made before they existed, or by the library) gets the *meet* of
the keys the operator made for it: the models in all of them, the lowest of every cap,
logprobs, tools and structured outputs only if every key allows them, the strongest watermark.
An account with neither gets no key from the console at all. A key's form can only tighten
its account's limits: an empty field means the limit, a value above it is refused with a
message naming the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from avocado_llm.billing.errors import NotFound
from avocado_llm.billing.records import Plan
from avocado_llm.billing.schema import Account, ApiKey

OPERATOR = "operator"
CONSOLE = "console"
EXPLICIT = "set by the operator"
DERIVED = "the tightest of the operator's keys"


@dataclass(frozen=True)
class KeyLimits:
    """The most a key made in the console may have; ``None`` means no limit."""

    models: tuple[str, ...] | None = None
    """Models such a key may call (None: every priced model)."""
    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens per minute."""
    expires_by: datetime | None = None
    """The latest expiry of such a key (None: it may never expire)."""
    plan: Plan = field(default_factory=Plan)
    """Caps per request and the watermark, copied into every such key as they are."""

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer or none, got {value}")
        for name in ("max_tokens", "max_n"):
            if getattr(self.plan, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self.plan, name)}")
        if self.plan.max_top_logprobs < 0 or self.plan.watermark < 0:
            raise ValueError("top_logprobs and the watermark cannot be negative")

    def to_json(self) -> dict[str, Any]:
        return {
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "expires_by": self.expires_by.isoformat() if self.expires_by else None,
            "plan": self.plan.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyLimits:
        expires = data.get("expires_by")
        models = data.get("models")
        return cls(
            models=tuple(models) if models is not None else None,
            rpm=data.get("rpm"),
            tpm=data.get("tpm"),
            expires_by=datetime.fromisoformat(expires) if expires else None,
            plan=Plan.from_json(data.get("plan")),
        )

    def describe(self) -> dict[str, str]:
        """Each limit in words (for the console page and `avocado admin accounts limits`)."""
        p = self.plan
        return {
            "models": ", ".join(self.models) if self.models is not None else "all",
            "rpm": str(self.rpm) if self.rpm else "unlimited",
            "tpm": str(self.tpm) if self.tpm else "unlimited",
            "max_tokens": str(p.max_tokens),
            "max_n": str(p.max_n),
            "logprobs": f"top {p.max_top_logprobs}" if p.logprobs else "no",
            "watermark": str(p.watermark),
            "tools": "yes" if p.tools else "no",
            "structured_outputs": "yes" if p.structured_outputs else "no",
            "expires_by": self.expires_by.isoformat() if self.expires_by else "never",
        }


def _lowest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def meet(a: KeyLimits, b: KeyLimits) -> KeyLimits:
    """Within both: what neither allows, the result does not allow."""
    models = a.models
    if models is None:
        models = b.models
    elif b.models is not None:
        models = tuple(m for m in models if m in b.models)
    logprobs = a.plan.logprobs and b.plan.logprobs
    plan = Plan(
        name=a.plan.name,
        max_tokens=min(a.plan.max_tokens, b.plan.max_tokens),
        max_n=min(a.plan.max_n, b.plan.max_n),
        logprobs=logprobs,
        max_top_logprobs=min(a.plan.max_top_logprobs, b.plan.max_top_logprobs) if logprobs else 0,
        watermark=max(a.plan.watermark, b.plan.watermark),
        tools=a.plan.tools and b.plan.tools,
        structured_outputs=a.plan.structured_outputs and b.plan.structured_outputs,
    )
    expires = a.expires_by if b.expires_by is None else b.expires_by
    if a.expires_by is not None and b.expires_by is not None:
        expires = min(a.expires_by, b.expires_by)
    return KeyLimits(models, _lowest(a.rpm, b.rpm), _lowest(a.tpm, b.tpm), expires, plan)


def _operator_keys_meet(conn: Connection, account_id: int) -> KeyLimits | None:
    """The meet of every key the operator made for the account — revoked and expired ones too,
    so that a customer cannot widen it by revoking the tighter keys from the console. Expiry:
    if every such key expires, console keys may not outlive the last of them."""
    rows = conn.execute(
        select(ApiKey.models, ApiKey.rpm, ApiKey.tpm, ApiKey.plan, ApiKey.expires_at)
        .where(ApiKey.account_id == account_id, ApiKey.origin == OPERATOR)
        .order_by(ApiKey.created_at)
    ).all()
    if not rows:
        return None
    result: KeyLimits | None = None
    for r in rows:
        limits = KeyLimits(
            tuple(r.models) if r.models is not None else None,
            r.rpm, r.tpm, None, Plan.from_json(r.plan),
        )  # fmt: skip
        result = limits if result is None else meet(result, limits)
    assert result is not None
    expiries = [r.expires_at for r in rows]
    last = None if any(e is None for e in expiries) else max(expiries)
    return replace(result, expires_by=last)


def account_id_of(conn: Connection, account: str) -> int:
    account_id = conn.scalar(select(Account.id).where(Account.name == account))
    if account_id is None:
        raise NotFound(f"no account named {account!r}")
    return int(account_id)


def effective(conn: Connection, account_id: int) -> tuple[KeyLimits | None, str]:
    """The account's ceiling for console keys and where it comes from (``EXPLICIT`` or
    ``DERIVED``); ``(None, "")`` when the operator has given the account nothing yet."""
    stored = conn.scalar(select(Account.key_limits).where(Account.id == account_id))
    if stored is not None:
        return KeyLimits.from_json(stored), EXPLICIT
    derived = _operator_keys_meet(conn, account_id)
    return (derived, DERIVED) if derived is not None else (None, "")


def store(conn: Connection, account_id: int, limits: KeyLimits | None) -> None:
    """Set the account's limits (None: back to the meet of the operator's keys)."""
    data = limits.to_json() if limits is not None else None
    conn.execute(update(Account).where(Account.id == account_id).values(key_limits=data))


@dataclass(frozen=True)
class KeyRequest:
    """What a customer asked for a new key in the console (None / empty: the limit)."""

    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    expires_at: datetime | None = None


def narrow(ceiling: KeyLimits, asked: KeyRequest, now: datetime) -> KeyLimits:
    """The new key's limits: ``asked`` within ``ceiling``; ValueError (for the customer) when
    anything asked is more than the ceiling allows."""
    if ceiling.expires_by is not None and ceiling.expires_by <= now:
        raise ValueError(
            f"keys of your account had to expire by {ceiling.expires_by:%Y-%m-%d %H:%M} UTC; "
            "ask your operator for a new key"
        )
    problems = []
    for label, asked_value, limit in (
        ("Requests per minute", asked.rpm, ceiling.rpm),
        ("Tokens per minute", asked.tpm, ceiling.tpm),
    ):
        if asked_value is not None and limit is not None and asked_value > limit:
            problems.append(f"{label} can be at most {limit} for your account (empty: {limit})")
    if asked.max_tokens is not None and asked.max_tokens > ceiling.plan.max_tokens:
        limit = ceiling.plan.max_tokens
        problems.append(f"Max tokens per request can be at most {limit} (empty: {limit})")
    if ceiling.models is not None:
        outside = [m for m in asked.models if m not in ceiling.models]
        if outside:
            problems.append(
                f"your account's keys may call only {', '.join(ceiling.models)}, not "
                f"{', '.join(outside)}"
            )
    expires_by = ceiling.expires_by
    if asked.expires_at is not None and expires_by is not None and asked.expires_at > expires_by:
        problems.append(f"keys of your account must expire by {expires_by:%Y-%m-%d %H:%M} UTC")
    if problems:
        raise ValueError("; ".join(problems))
    plan = ceiling.plan
    if asked.max_tokens is not None:
        plan = replace(plan, max_tokens=asked.max_tokens)
    return KeyLimits(
        models=tuple(asked.models) if asked.models else ceiling.models,
        rpm=asked.rpm if asked.rpm is not None else ceiling.rpm,
        tpm=asked.tpm if asked.tpm is not None else ceiling.tpm,
        expires_by=asked.expires_at if asked.expires_at is not None else ceiling.expires_by,
        plan=plan,
    )
