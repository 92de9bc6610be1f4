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
import os
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from avocado_llm.billing import admin_actions as actions
from avocado_llm.billing.admin_limits import limit_flags, parse_usd_arg
from avocado_llm.billing.errors import BillingError
from avocado_llm.billing.records import Plan
from avocado_llm.billing.service import Billing

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

    c = _Commands(groups, db)
    c.leaf(
        c.groups,
        "migrate",
        lambda b, a: print("database schema is up to date"),
        "create or upgrade the database schema",
    )
    _add_accounts(c)
    _add_keys(c)
    _add_prices_and_users(c)
    _add_reports(c)


class _Commands:
    """The ``admin`` subcommands being registered: :meth:`leaf` adds one (its action run by
    :func:`_runner`; ``--database-url`` also after it), :meth:`group` a group of them."""

    def __init__(self, groups: Any, db: argparse.ArgumentParser) -> None:
        self.groups, self.db = groups, db

    def leaf(self, parent: Any, name: str, action: Action, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[self.db], help=help)
        p.set_defaults(func=_runner(action))
        return p

    def group(self, name: str, help: str) -> Any:
        parser = self.groups.add_parser(name, help=help)
        return parser.add_subparsers(required=True, metavar="<cmd>")


def _add_accounts(c: _Commands) -> None:
    """``accounts create|limits``, ``credits add``."""
    accounts = c.group("accounts", "prepaid accounts")
    p = c.leaf(
        accounts, "create", actions.accounts_create, "create an account, optionally with credit"
    )
    p.add_argument("name")
    p.add_argument(
        "--credits", type=parse_usd_arg, default=0, metavar="USD", help="initial credit [0]"
    )
    limit_flags(p, "without any: keys made in the console get the tightest of your keys")
    p = c.leaf(
        accounts,
        "limits",
        actions.accounts_limits,
        "show or change the most a key made in the console for the account may have",
    )
    p.add_argument("name")
    limit_flags(p, "each one given replaces that limit; the rest stay")
    p.add_argument(
        "--reset",
        action="store_true",
        help="forget the limits: console keys then get the tightest of your keys for it",
    )

    credits = c.group("credits", "add prepaid credit")
    p = c.leaf(credits, "add", actions.credits_add, "add credit to an account")
    p.add_argument("name")
    p.add_argument("usd", type=parse_usd_arg, metavar="USD")
    p.add_argument("--reason", default="credits added", help="shown on the statement")


def _add_keys(c: _Commands) -> None:
    """``keys create|revoke``."""
    keys = c.group("keys", "API keys (need $AVOCADO_SECRET)")
    p = c.leaf(
        keys, "create", actions.keys_create, "create an API key; it is printed once, never stored"
    )
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
    p.add_argument(
        "--tools",
        action=argparse.BooleanOptionalAction,
        default=Plan.tools,
        help="allow tool calling (tools, tool_choice) [on]",
    )
    p.add_argument(
        "--structured-outputs",
        action=argparse.BooleanOptionalAction,
        default=Plan.structured_outputs,
        help="allow JSON answers (response_format json_object, json_schema) [on]",
    )
    p.add_argument("--json", action="store_true", help="print key_id and key as JSON")
    p = c.leaf(keys, "revoke", actions.keys_revoke, "revoke a key by its id (key_…)")
    p.add_argument("key_id")


def _add_prices_and_users(c: _Commands) -> None:
    """``prices set|list``, ``console-user create|list|disable``."""
    prices = c.group("prices", "per-model prices")
    p = c.leaf(
        prices, "set", actions.prices_set, "set a model's price (USD per 1M tokens, per request)"
    )
    p.add_argument("model")
    p.add_argument("--input-per-1m", type=parse_usd_arg, required=True, metavar="USD")
    p.add_argument("--output-per-1m", type=parse_usd_arg, required=True, metavar="USD")
    p.add_argument("--per-request", type=parse_usd_arg, default=0, metavar="USD")
    c.leaf(prices, "list", actions.prices_list, "list every priced model")

    users = c.group("console-user", "web console sign-ins (customers and operators)")
    p = c.leaf(
        users,
        "create",
        actions.console_user_create,
        "create a console sign-in; prints its password",
    )
    p.add_argument("--account", metavar="NAME", help="the customer's account")
    p.add_argument("--operator", action="store_true", help="an operator (/console/admin)")
    p.add_argument("--username", help="sign-in name [the account's name; operators: operator]")
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable [generate one, printed once]",
    )
    c.leaf(users, "list", actions.console_user_list, "list console sign-ins")
    p = c.leaf(
        users, "disable", actions.console_user_disable, "disable a sign-in and end its sessions"
    )
    p.add_argument("username")


def _add_reports(c: _Commands) -> None:
    """``usage``, ``statement``."""
    p = c.leaf(c.groups, "usage", actions.show_usage, "an account's balance and usage")
    p.add_argument("--account", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON with balance, totals and events")
    p.add_argument("--limit", type=int, metavar="N", help="only the N latest events [all]")

    p = c.leaf(c.groups, "statement", actions.show_statement, "an account's monthly statement")
    p.add_argument("--account", required=True, metavar="NAME")
    p.add_argument("--month", required=True, metavar="YYYY-MM", help="calendar month, UTC")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="[json]")


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
