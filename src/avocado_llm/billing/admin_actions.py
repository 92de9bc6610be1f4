"""What each ``avocado admin`` subcommand does, given the opened ledger and its arguments
(:mod:`avocado_llm.billing.command` registers them): accounts, credits, keys, console sign-ins,
prices, usage and statements."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta

from avocado_llm.billing import key_limits
from avocado_llm.billing.admin_limits import apply_limits, limits_given, print_limits
from avocado_llm.billing.console_users import generate_password
from avocado_llm.billing.errors import BillingError
from avocado_llm.billing.key_limits import KeyLimits
from avocado_llm.billing.money import format_usd
from avocado_llm.billing.records import Plan
from avocado_llm.billing.service import Billing
from avocado_llm.billing.statements import statement_csv


def accounts_create(billing: Billing, args: argparse.Namespace) -> None:
    limits = apply_limits(KeyLimits(), args) if limits_given(args) else None  # validated first
    account_id = billing.create_account(args.name, args.credits)
    print(f"account {args.name!r} (id {account_id}) created with ${format_usd(args.credits)}")
    if limits is not None:
        billing.set_account_key_limits(args.name, limits)
        print_limits(args.name, limits, key_limits.EXPLICIT)


def accounts_limits(billing: Billing, args: argparse.Namespace) -> None:
    if args.reset:
        if limits_given(args):
            raise ValueError("--reset forgets the limits: give it without other limits")
        billing.set_account_key_limits(args.name, None)
    elif limits_given(args):
        current, _ = billing.account_key_limits(args.name)
        billing.set_account_key_limits(args.name, apply_limits(current or KeyLimits(), args))
    limits, source = billing.account_key_limits(args.name)
    print_limits(args.name, limits, source)


def credits_add(billing: Billing, args: argparse.Namespace) -> None:
    billing.add_credits(args.name, args.usd, args.reason)
    balance = billing.balance(args.name)
    print(f"added ${format_usd(args.usd)} to {args.name!r}; balance ${format_usd(balance)}")


def keys_create(billing: Billing, args: argparse.Namespace) -> None:
    if not os.environ.get("AVOCADO_SECRET"):
        raise BillingError("set AVOCADO_SECRET (the server's key secret) to create keys")
    expires = None
    if args.expires_in_days is not None:
        expires = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    plan = Plan(
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        logprobs=args.top_logprobs > 0,
        max_top_logprobs=args.top_logprobs,
        watermark=args.watermark,
        tools=args.tools,
        structured_outputs=args.structured_outputs,
    )
    key_id, key = billing.create_key(
        args.account, models=args.models, rpm=args.rpm, tpm=args.tpm, expires_at=expires, plan=plan
    )
    if args.json:
        print(json.dumps({"key_id": key_id, "key": key, "account": args.account}))
        return
    print(f"key_id: {key_id}\nkey:    {key}")
    print("the key is shown only this once: store it now", file=sys.stderr)
    if billing.account_key_limits(args.account)[1] == key_limits.DERIVED:
        print(
            f"note: {args.account!r} has no key limits of its own: keys made in the console "
            "get the tightest of your keys for it (`avocado admin accounts limits` sets them)",
            file=sys.stderr,
        )


def keys_revoke(billing: Billing, args: argparse.Namespace) -> None:
    billing.revoke_key(args.key_id)
    print(f"revoked {args.key_id}")


def console_user_create(billing: Billing, args: argparse.Namespace) -> None:
    if args.account is None and not args.operator:
        raise ValueError("give --account NAME (a customer) or --operator")
    username = args.username or args.account or "operator"
    generated = args.password_env is None
    if generated:
        password = generate_password()
    else:
        password = os.environ.get(args.password_env, "")
        if not password:
            raise ValueError(f"${args.password_env} is empty or not set")
    billing.create_console_user(username, password, account=args.account, operator=args.operator)
    role = "operator" if args.operator else f"customer of {args.account!r}"
    print(f"console user {username!r} ({role}) created")
    if generated:
        print(f"password: {password}")
        print("the password is shown only this once: store it now", file=sys.stderr)


def console_user_list(billing: Billing, args: argparse.Namespace) -> None:
    for u in billing.console_users():
        role = "operator" if u["is_operator"] else "customer"
        state = "disabled" if u["disabled_at"] else "active"
        print(f"{u['username']}\t{role}\t{u['account'] or '-'}\t{state}")


def console_user_disable(billing: Billing, args: argparse.Namespace) -> None:
    billing.disable_console_user(args.username)
    print(f"disabled console user {args.username!r}")


def prices_set(billing: Billing, args: argparse.Namespace) -> None:
    billing.set_price(args.model, args.input_per_1m, args.output_per_1m, args.per_request)
    print(
        f"{args.model}: ${format_usd(args.input_per_1m)} per 1M input tokens, "
        f"${format_usd(args.output_per_1m)} per 1M output tokens, "
        f"${format_usd(args.per_request)} per request"
    )


def prices_list(billing: Billing, args: argparse.Namespace) -> None:
    for model, p in billing.prices().items():
        print(
            f"{model}\t{format_usd(p.input_per_1m)}\t{format_usd(p.output_per_1m)}\t"
            f"{format_usd(p.per_request)}"
        )


def show_usage(billing: Billing, args: argparse.Namespace) -> None:
    account = billing.account_info(args.account)
    events = billing.usage(args.account, args.limit)
    totals: dict[str, dict[str, int]] = {}
    for e in events:
        t = totals.setdefault(
            e["model"],
            dict.fromkeys(("requests", "prompt_tokens", "completion_tokens", "charges"), 0),
        )
        t["requests"] += 1
        t["prompt_tokens"] += e["prompt_tokens"]
        t["completion_tokens"] += e["completion_tokens"]
        t["charges"] += e["charge"]
    if args.json:
        print(
            json.dumps(
                {
                    "account": args.account,
                    "balance": account["balance"],
                    "held": account["held"],
                    "balance_usd": format_usd(account["balance"]),
                    "unit": "micro-USD",
                    "totals": totals,
                    "events": events,
                },
                indent=2,
            )
        )
        return
    print(
        f"{args.account}: balance ${format_usd(account['balance'])} "
        f"(held by running requests ${format_usd(account['held'])})"
    )
    print(f"{'model':<24} {'requests':>9} {'prompt':>10} {'completion':>11} {'charges':>14}")
    for model, t in sorted(totals.items()):
        print(
            f"{model:<24} {t['requests']:>9,} {t['prompt_tokens']:>10,} "
            f"{t['completion_tokens']:>11,} {'$' + format_usd(t['charges']):>14}"
        )


def show_statement(billing: Billing, args: argparse.Namespace) -> None:
    s = billing.statement(args.account, args.month)
    if args.format == "json":
        print(json.dumps(s, indent=2))
        return
    sys.stdout.write(statement_csv(s))
