"""The account key limits of ``avocado admin accounts``: their flags, what those parse to, and
the limits they make (the ceiling of every key an account's customers make in the console).
Also the argument type of an amount in USD."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from avocado_llm.billing.key_limits import KeyLimits
from avocado_llm.billing.money import parse_usd

LIMIT_FLAGS = ("models", "rpm", "tpm", "max_tokens", "max_n", "top_logprobs", "watermark",
               "tools", "structured_outputs", "keys_expire_by")  # fmt: skip
NO_LIMIT = "none"
"""What ``--models all``, ``--rpm none``, ``--keys-expire-by never`` … parse to."""


def limit_flags(p: argparse.ArgumentParser, note: str) -> None:
    """The account's key limits: the ceiling of every key its customers make in the console."""
    g = p.add_argument_group(f"limits of keys made in the console ({note})")
    g.add_argument("--models", type=parse_models, metavar="M,..|all", help="models they may call")
    g.add_argument("--rpm", type=parse_int_or_none, metavar="N|none", help="requests per minute")
    g.add_argument("--tpm", type=parse_int_or_none, metavar="N|none", help="tokens per minute")
    g.add_argument("--max-tokens", type=int, metavar="N", help="largest max_tokens")
    g.add_argument("--max-n", type=int, metavar="N", help="largest n")
    g.add_argument("--top-logprobs", type=int, metavar="K", help="logprobs up to K [0: none]")
    g.add_argument("--watermark", type=float, metavar="DELTA", help="watermark strength")
    g.add_argument("--tools", action=argparse.BooleanOptionalAction, help="tool calling")
    g.add_argument(
        "--structured-outputs",
        action=argparse.BooleanOptionalAction,
        help="JSON answers (response_format)",
    )
    g.add_argument(
        "--keys-expire-by",
        type=parse_date_or_none,
        metavar="YYYY-MM-DD|none",
        help="latest expiry (UTC midnight)",
    )


def parse_models(text: str) -> tuple[str, ...] | str:
    if text.strip().lower() == "all":
        return NO_LIMIT
    models = tuple(m for m in (m.strip() for m in text.split(",")) if m)
    if not models:
        raise argparse.ArgumentTypeError("give model names separated by commas, or 'all'")
    return models


def parse_int_or_none(text: str) -> int | str:
    if text.strip().lower() in ("none", "unlimited"):
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'none', got {text!r}") from None


def parse_date_or_none(text: str) -> datetime | str:
    if text.strip().lower() in ("none", "never"):
        return NO_LIMIT
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a date YYYY-MM-DD or 'none', got {text!r}") from None


def limits_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in LIMIT_FLAGS)


def apply_limits(base: KeyLimits, args: argparse.Namespace) -> KeyLimits:
    """``base`` with every limit flag that was given."""

    def value(name: str, current: Any) -> Any:
        got = getattr(args, name)
        if got is None:
            return current
        return None if got == NO_LIMIT else got

    plan = base.plan
    top = args.top_logprobs
    plan = replace(
        plan,
        max_tokens=value("max_tokens", plan.max_tokens),
        max_n=value("max_n", plan.max_n),
        watermark=value("watermark", plan.watermark),
        tools=value("tools", plan.tools),
        structured_outputs=value("structured_outputs", plan.structured_outputs),
        logprobs=plan.logprobs if top is None else top > 0,
        max_top_logprobs=plan.max_top_logprobs if top is None else top,
    )
    return KeyLimits(
        models=value("models", base.models),
        rpm=value("rpm", base.rpm),
        tpm=value("tpm", base.tpm),
        expires_by=value("keys_expire_by", base.expires_by),
        plan=plan,
    )


def print_limits(account: str, limits: KeyLimits | None, source: str) -> None:
    if limits is None:
        print(
            f"{account}: no limits for keys made in the console, and no key of yours to take "
            f"them from: its customers cannot make keys (set some: `avocado admin accounts "
            f"limits {account} --max-tokens …`)"
        )
        return
    print(f"{account}: keys made in the console may have at most ({source}):")
    for name, text in limits.describe().items():
        print(f"  {name:<11} {text}")


def parse_usd_arg(text: str) -> int:
    try:
        return parse_usd(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
