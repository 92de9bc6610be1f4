"""``avocado demo RECIPE``: sell a few calls of the recipe's student, end to end.

Starts ``avocado serve`` on the trained student (loopback, a throwaway SQLite ledger), creates a
demo account with credit, a price and a key, and with the official ``openai`` client asks one
held-out question of each of the recipe's task families (the first of each family's held-out
split: the same examples the report scores first). The answers are greedy (temperature 0) and
carry the account's watermark, as sold; the server secret, from which the watermark's key is
derived, is kept in the run directory (``demo/secret``), so a second demo gives the same
answers. Each answer is printed with the gold answer and ✔ or ✘ (the family's verifier), then
the usage, the charge and the remaining balance; the server is shut down. It then prints the
web console's address (``/console``) with a customer and an operator sign-in; run from a
terminal (stdin is a TTY) or with ``--keep``, it leaves the server running until Ctrl-C so the
console can be opened.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from avocado_llm.config.cli import EXIT_ERROR, add_command, fail, recipe_from_args, report_errors

DEMO_ACCOUNT = "demo"
DEMO_OPERATOR = "operator"
DEMO_CREDIT_USD = 5
PRICE_MICRO = {"input_per_1m": 500_000, "output_per_1m": 1_500_000, "per_request": 100}
"""$0.50 per 1M prompt tokens, $1.50 per 1M completion tokens, $0.0001 per request."""
MAX_TOKENS = 24
SECRET_FILE = Path("demo") / "secret"
"""Under the run directory: the demo server's secret (its watermark key derives from it)."""


@dataclass(frozen=True)
class DemoCall:
    """One question the demo asks; ``gold`` and ``family`` are ``None`` for a user's own."""

    prompt: str
    gold: str | None = None
    family: str | None = None

    def verdict(self, answer: str) -> bool | None:
        """The family's verifier on ``answer``; ``None`` without a gold answer."""
        if self.gold is None or self.family is None:
            return None
        from avocado_llm.world.tasks import get_family

        return get_family(self.family).verify(answer, self.gold)


def heldout_calls(families: list[str], seed: int) -> list[DemoCall]:
    """The first held-out example of each family (the first the report scores, too)."""
    from avocado_llm.world.tasks import get_family

    calls = []
    for name in families:
        for ex in get_family(name).generate("heldout", 1, seed):
            calls.append(DemoCall(ex.prompt, ex.answer, name))
    return calls


def demo_secret(run_dir: Path) -> str:
    """The demo server's secret: made once per run directory (owner-only), then reused, so
    the watermark's key — and with it every greedy answer — is the same from one demo to the
    next. It guards only the demo's throwaway ledgers (fresh keys and sign-ins every time)."""
    path = run_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by an earlier demo (or one running beside this one)
        return path.read_text().strip() or secret
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def call_line(call: DemoCall, answer: str) -> str:
    """``✔ arithmetic  What is 27 plus 15?  →  The answer is 42.  (gold 42)``"""
    verdict = call.verdict(answer)
    mark = {True: "✔", False: "✘", None: "·"}[verdict]
    gold = f"(gold {call.gold})" if call.gold is not None else "(your prompt: no gold answer)"
    return f"  {mark} {call.family or 'prompt':<10}  {call.prompt}  →  {answer.strip()}  {gold}"


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


def demo(
    student: Path,
    model_name: str,
    calls: list[DemoCall],
    keep: bool = False,
    secret: str | None = None,
    accuracy: float | None = None,
) -> dict[str, Any]:
    """Serve ``student``, ask it ``calls`` greedily through the metered API, print each answer
    with its verdict, the usage and the charge. ``secret``: the server's (random if ``None``);
    ``accuracy``: the report's held-out accuracy of the student, printed beside the tally."""
    from openai import OpenAI

    from avocado_llm.billing import MICRO, Billing
    from avocado_llm.billing.console_users import generate_password

    workdir = Path(tempfile.mkdtemp(prefix="avocado-demo-"))
    database_url = f"sqlite:///{workdir / 'ledger.db'}"
    secret = secret or secrets.token_urlsafe(32)
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
        print(f"\nserved {model_name} at {url}/v1 (a throwaway ledger); greedy answers "
              "(temperature 0), watermarked as sold:")  # fmt: skip
        answered = []
        prompt_tokens = completion_tokens = 0
        for call in calls:  # one at a time: each answer is the model's alone, run after run
            reply = client.chat.completions.create(
                model=model_name,
                messages=[{"role": "user", "content": call.prompt}],
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            answer = reply.choices[0].message.content or ""
            if reply.usage is not None:
                prompt_tokens += reply.usage.prompt_tokens
                completion_tokens += reply.usage.completion_tokens
            answered.append(
                {"family": call.family, "prompt": call.prompt, "gold": call.gold,
                 "answer": answer, "correct": call.verdict(answer)}
            )  # fmt: skip
            print(call_line(call, answer))
        after = billing.balance(DEMO_ACCOUNT)
        result = {
            "calls": answered,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            "charge_usd": (before - after) / MICRO,
            "balance_usd": after / MICRO,
        }
        graded = [a["correct"] for a in answered if a["correct"] is not None]
        if graded:
            tally = f"  {sum(graded)} of {len(graded)} right"
            if accuracy is not None:
                tally += f" (the report's held-out accuracy of this student: {accuracy:.1%})"
            print(tally)
        print(f"  usage:   {len(calls)} calls, {prompt_tokens} prompt + {completion_tokens} "
              "completion tokens")  # fmt: skip
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


def report_accuracy(run_dir: Path) -> float | None:
    """The student's overall held-out accuracy in the run's report, if it has one."""
    import json

    try:
        report = json.loads((run_dir / "eval" / "report.json").read_text())
        return float(report["models"]["student"]["overall"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


HELP = "serve the recipe's student and sell it a few calls with the openai client"
DESCRIPTION = """\
Start `avocado serve` on RECIPE's trained student with a throwaway ledger, create a demo
account, price and key, ask one held-out question of each task family with the official openai
client (greedy: the same answers every time), print each answer with the gold answer and ✔/✘,
the usage, charge and balance, and stop the server.
"""


def add_demo_command(commands: Any) -> None:
    p = add_command(commands, "demo", run_demo_command, HELP, DESCRIPTION, recipe=True)
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="ask this instead (repeatable; no gold answer to check it against)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the server running until Ctrl-C (the default when run from a terminal)",
    )


def run_demo_command(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR
    student = recipe.run_dir / "student"
    if not (student / "avocado.json").exists():
        return fail(f"no trained student in {student}; run `avocado run {args.recipe}` first")
    if args.prompt:
        calls = [DemoCall(p) for p in args.prompt]
    else:
        calls = heldout_calls(list(recipe.world.families), recipe.seed)

    def sell() -> int:
        demo(
            student,
            recipe.serve.model_name,
            calls,
            keep=args.keep,
            secret=demo_secret(recipe.run_dir),
            accuracy=report_accuracy(recipe.run_dir),
        )
        return 0

    return report_errors(sell, (RuntimeError,), interrupted_code=0)
