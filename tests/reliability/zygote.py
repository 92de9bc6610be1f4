"""Starts ``avocado`` commands quickly, so that a test can kill and restart one often.

Importing the server or the harvest (torch, transformers) takes seconds; this process imports
them once, then for every request on stdin forks a child that runs exactly what the ``avocado``
command runs (``avocado_llm.cli.main(["serve", ...])``) in a new session, with its output
appended to a log file and, when it exits, its exit code written to ``<log>.rc``. The child is
an ordinary process of that command: the tests kill it with SIGKILL by pid.

Protocol, one JSON object per line: ``{"argv": [...], "env": {...}, "log": "path"}`` in,
``{"pid": N}`` out. When stdin closes, every child still running is killed and this exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys

import avocado_llm.cli
import avocado_llm.harvest
import avocado_llm.serve.app
import avocado_llm.serve.command
import avocado_llm.teachers.hf  # all imported once here, before any fork


def _serve_in_child(argv: list[str], env: dict[str, str], log: str) -> None:
    """In the forked child: become a session leader, log to ``log``, run the command; never
    return into the parent's loop."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(OSError, AttributeError):  # die with the zygote (Linux)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.environ.update(env)
        code = avocado_llm.cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(f"{log}.rc", "w") as f:
            f.write(str(code))
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    children: list[int] = []
    try:
        for line in sys.stdin:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _serve_in_child(request["argv"], request.get("env", {}), request["log"])
            children.append(pid)
            print(json.dumps({"pid": pid}), flush=True)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
