"""``avocado admin``: accounts, credits, keys, prices, usage and statements.

    avocado admin accounts create acme --credits 25
    avocado admin accounts limits acme --models avocado-1 --rpm 60 --max-tokens 256
    avocado admin prices set avocado-1 --input-per-1m 0.50 --output-per-1m 1.50
    AVOCADO_SECRET=… avocado admin keys create --account acme --models avocado-1 --rpm 60
    avocado admin statement --account acme --month 2026-03 --format csv
    avocado admin console-user create --account acme     # prints a generated password once

The database is ``--database-url``, else ``$AVOCADO_DATABASE_URL``, else ``sqlite:///avocado.db``;
its schema is created or upgraded first. Amounts are USD, read exactly (at most 6 decimals).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from avocado_llm.billing import key_limits
from avocado_llm.billing.console_users import generate_password
from avocado_llm.billing.errors import BillingError
from avocado_llm.billing.key_limits import KeyLimits
from avocado_llm.billing.money import format_usd, parse_usd
from avocado_llm.billing.records import Plan
from avocado_llm.billing.service import Billing
from avocado_llm.billing.statements import statement_csv

DEFAULT_DATABASE_URL = "sqlite:///avocado.db"
Action = Callable[[Billing, argparse.Namespace], None]


def add_admin_command(commands: Any) -> None:
    """Register ``admin`` on the ``avocado`` parser's subcommands."""
    admin = commands.add_parser(
        "admin",
        help="manage the billing ledger: accounts, credits, keys, prices, usage, statements",
        description=__doc__.split("\n\n")[0] + " Acts on the database given by --database-url, "
        "else $AVOCADO_DATABASE_URL, else sqlite:///avocado.db.",
    )
    db = argparse.ArgumentParser(add_help=False)  # --database-url also after the subcommand
    db.add_argument("--database-url", default=argparse.SUPPRESS, metavar="URL", help="database")
    admin.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="sqlite:///path or postgresql+psycopg://user@host/db",
    )
    groups = admin.add_subparsers(dest="admin_command", required=True, metavar="<admin command>")

    def leaf(parent: Any, name: str, action: Action, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[db], help=help)
        p.set_defaults(func=_runner(action))
        return p

    def group(name: str, help: str) -> Any:
        return groups.add_parser(name, help=help).add_subparsers(required=True, metavar="<cmd>")

    leaf(
        groups,
        "migrate",
        lambda b, a: print("database schema is up to date"),
        "create or upgrade the database schema",
    )
    accounts = group("accounts", "prepaid accounts")
    p = leaf(accounts, "create", _accounts_create, "create an account, optionally with credit")
    p.add_argument("name")
    p.add_argument("--credits", type=_usd, default=0, metavar="USD", help="initial credit [0]")
    _limit_flags(p, "without any: keys made in the console get the tightest of your keys")
    p = leaf(
        accounts,
        "limits",
        _accounts_limits,
        "show or change the most a key made in the console for the account may have",
    )
    p.add_argument("name")
    _limit_flags(p, "each one given replaces that limit; the rest stay")
    p.add_argument(
        "--reset",
        action="store_true",
        help="forget the limits: console keys then get the tightest of your keys for it",
    )

    credits = group("credits", "add prepaid credit")
    p = leaf(credits, "add", _credits_add, "add credit to an account")
    p.add_argument("name")
    p.add_argument("usd", type=_usd, metavar="USD")
    p.add_argument("--reason", default="credits added", help="shown on the statement")

    keys = group("keys", "API keys (need $AVOCADO_SECRET)")
    p = leaf(keys, "create", _keys_create, "create an API key; it is printed once, never stored")
    p.add_argument("--account", required=True, metavar="NAME")
    p.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        metavar="M,..",
        help="models the key may call [all]",
    )
    p.add_argument("--rpm", type=int, help="requests per minute [unlimited]")
    p.add_argument("--tpm", type=int, help="tokens per minute [unlimited]")
    p.add_argument("--expires-in-days", type=float, metavar="D", help="expiry [never]")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=Plan.max_tokens,
        help=f"largest max_tokens a request may ask [{Plan.max_tokens}]",
    )
    p.add_argument("--max-n", type=int, default=Plan.max_n, help="largest n [1]")
    p.add_argument(
        "--top-logprobs",
        type=int,
        default=0,
        metavar="K",
        help="allow logprobs with up to K top_logprobs [0: no logprobs]",
    )
    p.add_argument(
        "--watermark",
        type=float,
        default=Plan.watermark,
        metavar="DELTA",
        help=f"watermark strength of the answers (see `avocado watermark`) [{Plan.watermark}; "
        "0: off]",
    )
    p.add_argument("--json", action="store_true", help="print key_id and key as JSON")
    p = leaf(keys, "revoke", _keys_revoke, "revoke a key by its id (key_…)")
    p.add_argument("key_id")

    prices = group("prices", "per-model prices")
    p = leaf(prices, "set", _prices_set, "set a model's price (USD per 1M tokens, per request)")
    p.add_argument("model")
    p.add_argument("--input-per-1m", type=_usd, required=True, metavar="USD")
    p.add_argument("--output-per-1m", type=_usd, required=True, metavar="USD")
    p.add_argument("--per-request", type=_usd, default=0, metavar="USD")
    leaf(prices, "list", _prices_list, "list every priced model")

    users = group("console-user", "web console sign-ins (customers and operators)")
    p = leaf(users, "create", _console_user_create, "create a console sign-in; prints its password")
    p.add_argument("--account", metavar="NAME", help="the customer's account")
    p.add_argument("--operator", action="store_true", help="an operator (/console/admin)")
    p.add_argument("--username", help="sign-in name [the account's name; operators: operator]")
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable [generate one, printed once]",
    )
    leaf(users, "list", _console_user_list, "list console sign-ins")
    p = leaf(users, "disable", _console_user_disable, "disable a sign-in and end its sessions")
    p.add_argument("username")

    p = leaf(groups, "usage", _usage, "an account's balance and usage")
    p.add_argument("--account", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON with balance, totals and events")
    p.add_argument("--limit", type=int, metavar="N", help="only the N latest events [all]")

    p = leaf(groups, "statement", _statement, "an account's monthly statement")
    p.add_argument("--account", required=True, metavar="NAME")
    p.add_argument("--month", required=True, metavar="YYYY-MM", help="calendar month, UTC")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="[json]")


def _limit_flags(p: argparse.ArgumentParser, note: str) -> None:
    """The account's key limits: the ceiling of every key its customers make in the console."""
    g = p.add_argument_group(f"limits of keys made in the console ({note})")
    g.add_argument("--models", type=_models, metavar="M,..|all", help="models they may call")
    g.add_argument("--rpm", type=_int_or_none, metavar="N|none", help="requests per minute")
    g.add_argument("--tpm", type=_int_or_none, metavar="N|none", help="tokens per minute")
    g.add_argument("--max-tokens", type=int, metavar="N", help="largest max_tokens")
    g.add_argument("--max-n", type=int, metavar="N", help="largest n")
    g.add_argument("--top-logprobs", type=int, metavar="K", help="logprobs up to K [0: none]")
    g.add_argument("--watermark", type=float, metavar="DELTA", help="watermark strength")
    g.add_argument(
        "--keys-expire-by",
        type=_date_or_none,
        metavar="YYYY-MM-DD|none",
        help="latest expiry (UTC midnight)",
    )


LIMIT_FLAGS = ("models", "rpm", "tpm", "max_tokens", "max_n", "top_logprobs", "watermark",
               "keys_expire_by")  # fmt: skip
NO_LIMIT = "none"
"""What ``--models all``, ``--rpm none``, ``--keys-expire-by never`` … parse to."""


def _models(text: str) -> tuple[str, ...] | str:
    if text.strip().lower() == "all":
        return NO_LIMIT
    models = tuple(m for m in (m.strip() for m in text.split(",")) if m)
    if not models:
        raise argparse.ArgumentTypeError("give model names separated by commas, or 'all'")
    return models


def _int_or_none(text: str) -> int | str:
    if text.strip().lower() in ("none", "unlimited"):
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'none', got {text!r}") from None


def _date_or_none(text: str) -> datetime | str:
    if text.strip().lower() in ("none", "never"):
        return NO_LIMIT
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a date YYYY-MM-DD or 'none', got {text!r}") from None


def _given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in LIMIT_FLAGS)


def _apply_limits(base: KeyLimits, args: argparse.Namespace) -> KeyLimits:
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


def _print_limits(account: str, limits: KeyLimits | None, source: str) -> None:
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


def _usd(text: str) -> int:
    try:
        return parse_usd(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    """Open the database (migrated), run ``action``, turn known errors into messages."""

    def run(args: argparse.Namespace) -> int:
        url = args.database_url or os.environ.get("AVOCADO_DATABASE_URL") or DEFAULT_DATABASE_URL
        try:
            billing = Billing(url, os.environ.get("AVOCADO_SECRET", ""))
        except ArgumentError as e:  # the URL may hold a password: not echoed
            print(
                f"error: the database URL is not one SQLAlchemy can open ({e}); use "
                "sqlite:///path or postgresql+psycopg://user@host/db",
                file=sys.stderr,
            )
            return 2
        try:
            billing.migrate()
            action(billing, args)
        except (BillingError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OperationalError as e:
            shown = make_url(url).render_as_string(hide_password=True)
            print(f"error: cannot use the database {shown}: {e.orig}", file=sys.stderr)
            return 1
        finally:
            billing.close()
        return 0

    return run


def _accounts_create(billing: Billing, args: argparse.Namespace) -> None:
    limits = _apply_limits(KeyLimits(), args) if _given(args) else None  # validated first
    account_id = billing.create_account(args.name, args.credits)
    print(f"account {args.name!r} (id {account_id}) created with ${format_usd(args.credits)}")
    if limits is not None:
        billing.set_account_key_limits(args.name, limits)
        _print_limits(args.name, limits, key_limits.EXPLICIT)


def _accounts_limits(billing: Billing, args: argparse.Namespace) -> None:
    if args.reset:
        if _given(args):
            raise ValueError("--reset forgets the limits: give it without other limits")
        billing.set_account_key_limits(args.name, None)
    elif _given(args):
        current, _ = billing.account_key_limits(args.name)
        billing.set_account_key_limits(args.name, _apply_limits(current or KeyLimits(), args))
    limits, source = billing.account_key_limits(args.name)
    _print_limits(args.name, limits, source)


def _credits_add(billing: Billing, args: argparse.Namespace) -> None:
    billing.add_credits(args.name, args.usd, args.reason)
    balance = billing.balance(args.name)
    print(f"added ${format_usd(args.usd)} to {args.name!r}; balance ${format_usd(balance)}")


def _keys_create(billing: Billing, args: argparse.Namespace) -> None:
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


def _keys_revoke(billing: Billing, args: argparse.Namespace) -> None:
    billing.revoke_key(args.key_id)
    print(f"revoked {args.key_id}")


def _console_user_create(billing: Billing, args: argparse.Namespace) -> None:
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


def _console_user_list(billing: Billing, args: argparse.Namespace) -> None:
    for u in billing.console_users():
        role = "operator" if u["is_operator"] else "customer"
        state = "disabled" if u["disabled_at"] else "active"
        print(f"{u['username']}\t{role}\t{u['account'] or '-'}\t{state}")


def _console_user_disable(billing: Billing, args: argparse.Namespace) -> None:
    billing.disable_console_user(args.username)
    print(f"disabled console user {args.username!r}")


def _prices_set(billing: Billing, args: argparse.Namespace) -> None:
    billing.set_price(args.model, args.input_per_1m, args.output_per_1m, args.per_request)
    print(
        f"{args.model}: ${format_usd(args.input_per_1m)} per 1M input tokens, "
        f"${format_usd(args.output_per_1m)} per 1M output tokens, "
        f"${format_usd(args.per_request)} per request"
    )


def _prices_list(billing: Billing, args: argparse.Namespace) -> None:
    for model, p in billing.prices().items():
        print(
            f"{model}\t{format_usd(p.input_per_1m)}\t{format_usd(p.output_per_1m)}\t"
            f"{format_usd(p.per_request)}"
        )


def _usage(billing: Billing, args: argparse.Namespace) -> None:
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


def _statement(billing: Billing, args: argparse.Namespace) -> None:
    s = billing.statement(args.account, args.month)
    if args.format == "json":
        print(json.dumps(s, indent=2))
        return
    sys.stdout.write(statement_csv(s))
