"""``avocado teachers up RECIPE`` / ``avocado teachers down RECIPE``: the vLLM servers of a
recipe's ``engine: vllm`` teachers (:mod:`avocado_llm.teachers.vllm_server`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from avocado_llm.config.cli import EXIT_ERROR, add_command, fail, recipe_from_args, report_errors
from avocado_llm.teachers.base import TeacherError
from avocado_llm.teachers.vllm_server import (
    STOP_GRACE_S,
    is_server,
    read_state,
    server_pid,
    state_dir,
    stop_group,
    vllm_configs,
    vllm_teachers,
)

WATCH_S = 5.0
"""How often ``up`` checks that its servers are still healthy."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR
    configs = vllm_configs(recipe, args.only)
    if not configs:
        return fail(f"{args.recipe} has no engine: vllm teacher{' of --only' if args.only else ''}")

    def serve() -> int:
        with vllm_teachers(recipe, note=_note, only=args.only) as urls:
            for name, url in urls.items():
                print(f"{name}\t{url}", flush=True)  # stdout: for scripts
            _note("the vLLM servers are up; Ctrl-C or SIGTERM stops them")
            while True:
                time.sleep(WATCH_S)
                # A dead process, not a slow /health: a busy server on a loaded CPU answers late.
                down = [c.name for c in configs if server_pid(recipe, c) is None]
                if down:
                    logs = ", ".join(str(state_dir(recipe) / f"{n}.log") for n in down)
                    return fail(f"the vLLM server of {', '.join(down)} went down (see {logs})")

    return report_errors(serve, (TeacherError,), interrupted="stopped the vLLM servers")


def _down(args: argparse.Namespace) -> int:
    """Stop servers that an ``up`` left behind (its process killed, say): those whose state
    file names a live vLLM server process."""
    recipe = recipe_from_args(args)
    if recipe is None:
        return EXIT_ERROR
    for cfg in vllm_configs(recipe, args.only):
        state = read_state(recipe, cfg.name)
        pid, url = (state or {}).get("pid"), str((state or {}).get("base_url", ""))
        port = url.rsplit(":", 1)[-1].split("/")[0]
        if isinstance(pid, int) and port.isdigit() and is_server(pid, int(port)):
            stop_group(pid, STOP_GRACE_S)
            _note(f"teacher {cfg.name}: stopped the vLLM server at {url} (pid {pid})")
        else:
            _note(f"teacher {cfg.name}: no vLLM server running")
        with contextlib.suppress(FileNotFoundError):
            (state_dir(recipe) / f"{cfg.name}.json").unlink()
    return 0


HELP = "start (up) or stop (down) the vLLM servers of a recipe's engine: vllm teachers"


def add_teachers_command(commands: Any) -> None:
    teachers = commands.add_parser("teachers", help=HELP)
    sub = teachers.add_subparsers(dest="teachers_command", required=True, metavar="<command>")
    up = add_command(
        sub,
        "up",
        _up,
        help="start one vLLM server per engine: vllm teacher and keep them up until Ctrl-C",
        description="Start one vLLM OpenAI-compatible server per engine: vllm teacher of RECIPE "
        "on 127.0.0.1 (a free port), wait until each is healthy, print 'NAME<TAB>BASE_URL' "
        "lines, and keep them up until Ctrl-C or SIGTERM, which stop them all. Logs: "
        "RUN_DIR/teachers/NAME.log. `avocado harvest` and `avocado run` find servers that are "
        "up and start the others themselves.",
        recipe=True,
    )
    down = add_command(
        sub,
        "down",
        _down,
        help="stop vLLM servers left running by an up that was killed",
        description="Stop the vLLM servers whose state files (RUN_DIR/teachers/NAME.json) name "
        "a live server process.",
        recipe=True,
    )
    for p in (up, down):
        p.add_argument("--only", nargs="+", metavar="NAME", help="only these teachers")
