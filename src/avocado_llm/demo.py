"""``avocado demo RECIPE``: sell one call of the recipe's student, end to end.

Starts ``avocado serve`` on the trained student (loopback, a throwaway SQLite ledger), creates a
demo account with credit, a price and a key, makes one chat completion with the official
``openai`` client, prints the answer, the usage, the charge and the remaining balance, and shuts
the server down. It then prints the web console's address (``/console``) with a customer and
an operator sign-in; run from a terminal (stdin is a TTY) or with ``--keep``, it leaves the
server running until Ctrl-C so the console can be opened.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

DEMO_ACCOUNT = "demo"
DEMO_OPERATOR = "operator"
DEMO_CREDIT_USD = 5
PRICE_MICRO = {"input_per_1m": 500_000, "output_per_1m": 1_500_000, "per_request": 100}
"""$0.50 per 1M prompt tokens, $1.50 per 1M completion tokens, $0.0001 per request."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"avocado serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"avocado serve did not answer /health within {timeout_s:.0f} s")


def demo(student: Path, model_name: str, prompt: str, keep: bool = False) -> dict[str, Any]:
    from openai import OpenAI

    from avocado_llm.billing import MICRO, Billing
    from avocado_llm.billing.console_users import generate_password

    workdir = Path(tempfile.mkdtemp(prefix="avocado-demo-"))
    database_url = f"sqlite:///{workdir / 'ledger.db'}"
    secret = secrets.token_urlsafe(32)
    billing = Billing(database_url, secret)
    billing.migrate()
    billing.create_account(DEMO_ACCOUNT, DEMO_CREDIT_USD * MICRO)
    billing.set_price(model_name, **PRICE_MICRO)
    _, key = billing.create_key(DEMO_ACCOUNT)
    before = billing.balance(DEMO_ACCOUNT)
    sign_ins = {DEMO_ACCOUNT: generate_password(), DEMO_OPERATOR: generate_password()}
    billing.create_console_user(DEMO_ACCOUNT, sign_ins[DEMO_ACCOUNT], account=DEMO_ACCOUNT)
    billing.create_console_user(DEMO_OPERATOR, sign_ins[DEMO_OPERATOR], operator=True)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AVOCADO_SECRET": secret}
    cmd = [sys.executable, "-m", "avocado_llm.cli", "serve", "--model", str(student),
           "--model-name", model_name, "--port", str(port), "--database-url", database_url,
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    try:
        _wait_healthy(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key=key)
        answer = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": prompt}], max_tokens=24
        )
        after = billing.balance(DEMO_ACCOUNT)
        result = {
            "answer": answer.choices[0].message.content,
            "usage": answer.usage.model_dump() if answer.usage else None,
            "charge_usd": (before - after) / MICRO,
            "balance_usd": after / MICRO,
        }
        print(f"\nserved {model_name} at {url}/v1 (a throwaway ledger)")
        print(f"  prompt:  {prompt}")
        print(f"  answer:  {result['answer']}")
        print(f"  usage:   {result['usage']}")
        print(f"  charge:  ${result['charge_usd']:.6f}   balance: ${result['balance_usd']:.6f}")
        keep = keep or (sys.stdin is not None and sys.stdin.isatty())
        print(f"\nweb console: {url}/console/")
        print(f"  customer sign-in: {DEMO_ACCOUNT} / {sign_ins[DEMO_ACCOUNT]}")
        print(f"  operator sign-in: {DEMO_OPERATOR} / {sign_ins[DEMO_OPERATOR]}  (/console/admin)")
        if keep:
            print(f"\nthe server keeps running; try it with the key {key}\nCtrl-C to stop")
            proc.wait()
        else:
            print("  (stopped now: run it in a terminal, or with --keep, to open the console)")
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        billing.close()
        shutil.rmtree(workdir, ignore_errors=True)


def add_demo_command(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="serve the recipe's student and make one paid call with the openai client",
        description="Start `avocado serve` on RECIPE's trained student with a throwaway ledger, "
        "create a demo account, price and key, make one chat completion with the official "
        "openai client, print the answer, usage, charge and balance, and stop the server.",
    )
    p.add_argument("recipe", type=Path)
    p.add_argument("--prompt", default="What is 27 plus 15?", help="the question to sell")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the server running until Ctrl-C (the default when run from a terminal)",
    )
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from avocado_llm.config import load_recipe_or_report

    recipe = load_recipe_or_report(args.recipe)
    if recipe is None:
        return 1
    student = recipe.run_dir / "student"
    if not (student / "avocado.json").exists():
        print(f"error: no trained student in {student}; run `avocado run {args.recipe}` first",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        demo(student, recipe.serve.model_name, args.prompt, keep=args.keep)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
