"""``avocado serve`` as a user runs it: a separate process, settings from flags and AVOCADO_*
variables, stopped with Ctrl-C; and its refusals when a setting is missing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import openai
import pytest
from serve_helpers import PRICE, SECRET

from avocado_llm.billing import MICRO, Billing
from avocado_llm.serve.command import add_serve_command
from servers import avocado_serve

# The `serve` subcommand on a parser of its own, as cli.py registers it.
SCRIPT = """
import argparse, sys
from avocado_llm.serve.command import add_serve_command
parser = argparse.ArgumentParser(prog="avocado")
add_serve_command(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avocado")
    add_serve_command(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_serve_refuses_to_start_without_a_model_or_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AVOCADO_SECRET", "AVOCADO_MODEL_DIR", "AVOCADO_UPSTREAM_URL"):
        monkeypatch.delenv(name, raising=False)
    args = _parse()
    assert args.func(args) == 2
    assert "--model DIR" in capsys.readouterr().err
    args = _parse("--model", "zoo/qwen-tiny")
    assert args.func(args) == 2
    assert "AVOCADO_SECRET" in capsys.readouterr().err


def test_avocado_serve_answers_paying_keys_and_stops_on_ctrl_c(
    tmp_path: Path, zoo_dir: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price("tiny", PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", MICRO)
    _, key = billing.create_key("acme")
    flags = ["--model", str(zoo_dir / "qwen-tiny"), "--model-name", "tiny",
             "--database-url", database_url]  # fmt: skip
    with avocado_serve(*flags, secret=SECRET, command=[sys.executable, "-c", SCRIPT]) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "What is 3 + 4?"}], max_tokens=8
        )
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        client.close()
    output = server.output
    assert server.returncode == 0, output
    assert key not in output  # the access log shows the key id, never the key
    assert "POST /v1/chat/completions 200" in output
    assert billing.balance("acme") < MICRO
    billing.close()
