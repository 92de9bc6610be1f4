"""``avocado serve``: the model behind an OpenAI-compatible API that only paying keys can call.

AVOCADO_SECRET=... avocado serve --model runs/tiny/student --port 8000
AVOCADO_SECRET=... avocado serve --upstream http://127.0.0.1:8001/v1 --model-name qwen3
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from avocado_llm.config.cli import EXIT_USAGE, add_command, fail
from avocado_llm.serve.settings import ServeSettings

WORKER_START_TIMEOUT_S = 600  # longest a worker process may take to load the model

# CLI flag → settings field; each flag overrides its AVOCADO_* variable.
_FLAGS = {
    "model": "model_dir",
    "model_name": "model_name",
    "host": "host",
    "port": "port",
    "database_url": "database_url",
    "redis_url": "redis_url",
    "stale_hold_after_s": "stale_hold_after_s",
    "lease_s": "lease_s",
    "upstream": "upstream_url",
    "upstream_model": "upstream_model",
    "upstream_watermark": "upstream_watermark",
    "workers": "workers",
    "device": "device",
    "threads": "threads",
}


HELP = "serve a model behind an OpenAI-compatible API with keys, credit and limits"
DESCRIPTION = """\
Serve a Hugging Face model directory in process (dynamic batching), or put the same keys,
prices, holds and rate limits in front of an OpenAI-compatible server (--upstream). Every flag
may also come from its AVOCADO_* variable (AVOCADO_MODEL_DIR, AVOCADO_DATABASE_URL, ...);
AVOCADO_SECRET is required. Keys, accounts and prices are managed with `avocado admin`.
"""


def add_serve_command(commands: Any) -> None:
    """Register ``serve`` on the ``avocado`` parser's subcommands."""
    p = add_command(commands, "serve", run_serve_command, HELP, DESCRIPTION)
    p.add_argument("--model", type=Path, metavar="DIR", help="HF model directory to serve")
    p.add_argument("--model-name", metavar="NAME", help="model id for clients [DIR's name]")
    p.add_argument("--host", help="interface to listen on [127.0.0.1]")
    p.add_argument("--port", type=int, help="TCP port [8000]")
    p.add_argument("--database-url", metavar="URL", help="ledger [sqlite:///avocado.db]")
    p.add_argument("--redis-url", metavar="URL", help="share rate limits across processes")
    p.add_argument(
        "--stale-hold-after-s",
        type=float,
        metavar="S",
        help="release only holds older than this (at start-up and in the sweeps) [0]",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        metavar="S",
        help="this server's lease on its holds: others release them only once it ran out or "
        "the process is gone [30]",
    )
    p.add_argument("--upstream", metavar="URL", help="forward to this OpenAI-compatible /v1 URL")
    p.add_argument("--upstream-model", metavar="NAME", help="model name sent upstream [NAME]")
    p.add_argument(
        "--no-upstream-watermark",
        dest="upstream_watermark",
        action="store_const",
        const=False,
        help="send no watermark upstream (an upstream that is not vLLM with the processor "
        "avocado_watermark.vllm:WatermarkLogitsProcessor)",
    )
    p.add_argument("--workers", type=int, help="server processes (share a PostgreSQL ledger) [1]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps [auto]")
    p.add_argument("--threads", type=int, help="torch CPU threads [torch's default]")
    p.add_argument("--log-level", default="info", help="debug, info, warning [info]")


def run_serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {field: getattr(args, flag) for flag, field in _FLAGS.items()}
    try:
        settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        return fail(problems, EXIT_USAGE)
    if not settings.secret.get_secret_value():
        return fail("set AVOCADO_SECRET (the server secret API keys are HMAC'd under)", EXIT_USAGE)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if settings.upstream_url is not None and settings.upstream_watermark:
        from avocado_llm.serve.upstream_probe import MISSING, Verdict

        verdict = asyncio.run(_probe_upstream(settings))
        if verdict is Verdict.MISSING:
            return fail(MISSING)
        if verdict is Verdict.UNKNOWN:
            print("note: the upstream did not answer the watermark probe; watermarked requests "
                  "get 503 until it does", file=sys.stderr)  # fmt: skip
    common: dict[str, Any] = {"host": settings.host, "port": settings.port, "access_log": False,
              "log_level": args.log_level, "timeout_graceful_shutdown": 30}  # fmt: skip
    if settings.workers == 1:
        from avocado_llm.serve.app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    _prepare_ledger(settings)
    if settings.database_url.startswith("sqlite"):
        print(
            "note: several workers on SQLite take turns writing; use PostgreSQL "
            "(--database-url postgresql+psycopg://...) for throughput",
            file=sys.stderr,
        )
    if settings.redis_url is None:
        print("note: rate limits are counted per worker process (--redis-url shares them)",
              file=sys.stderr)  # fmt: skip
    os.environ.update(_as_env(settings.model_copy(update={"manage_ledger_on_start": False})))
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # uvicorn restarts a worker that does not answer within 5 s by default, and importing
        # torch and loading a model takes longer: every worker would be killed while starting.
        common["timeout_worker_healthcheck"] = WORKER_START_TIMEOUT_S
    uvicorn.run("avocado_llm.serve.app:create_app_from_env", factory=True,
                workers=settings.workers, **common)  # fmt: skip
    return 0


async def _probe_upstream(settings: ServeSettings) -> Any:
    """Once, before serving: does the upstream run the watermark processor?"""
    import aiohttp

    from avocado_llm.serve.upstream_probe import probe

    key = settings.upstream_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    async with aiohttp.ClientSession(headers=headers, trust_env=False) as session:
        model = settings.upstream_model or settings.served_name
        return await probe(session, str(settings.upstream_url), model)


def _prepare_ledger(settings: ServeSettings) -> None:
    """Once, before the workers start: migrate, and release the holds of servers gone."""
    from avocado_llm.billing import Billing

    billing = Billing(settings.database_url, settings.secret.get_secret_value())
    try:
        billing.migrate()
        released = billing.release_stale_holds(settings.stale_hold_after_s)
        if released:
            print(f"released {released} hold(s) left open by an earlier crash", file=sys.stderr)
    finally:
        billing.close()


def _as_env(settings: ServeSettings) -> dict[str, str]:
    """The settings as ``AVOCADO_*`` variables, for worker processes to read back."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"AVOCADO_{name.upper()}"] = str(value)
    return env
