"""``avocado serve`` as a user runs it, for the tests: its own process on a free loopback port,
waited for until ``/health`` answers, stopped with Ctrl-C (SIGINT) at the end of the block.

    with avocado_serve("--model", str(zoo_dir / "qwen-tiny"), "--model-name", "tiny",
                       "--database-url", database_url, secret=SECRET) as server:
        openai.OpenAI(base_url=server.url + "/v1", api_key=key)...
    assert server.returncode == 0 and "POST /v1/chat/completions 200" in server.output
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

CLI = (sys.executable, "-m", "avocado_llm.cli")
"""How the server is started: the installed CLI's module (``serve`` and the flags follow)."""


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    port: int
    output: str = ""
    """Everything it printed (stdout and stderr), once it has stopped."""

    @property
    def url(self) -> str:
        """Its origin, ``http://127.0.0.1:PORT`` (the API is under ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def avocado_serve(
    *flags: str,
    secret: str,
    command: Sequence[str] = CLI,
    start_timeout_s: float = 120,
    stop_timeout_s: float = 60,
) -> Iterator[ServeProcess]:
    """Run ``command serve FLAGS --port PORT`` (``AVOCADO_SECRET=secret``, one torch thread)
    until the block ends; yields once ``/health`` answers 200. A server that exits or does not
    answer within ``start_timeout_s`` fails the test with what it printed; one that does not
    stop within ``stop_timeout_s`` of SIGINT is killed and fails it too."""
    port = free_port()
    env = {**os.environ, "AVOCADO_SECRET": secret, "AVOCADO_THREADS": "1"}
    proc = subprocess.Popen(
        [*command, "serve", *flags, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = ServeProcess(proc, port)
    try:
        _wait_healthy(server, start_timeout_s)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            server.output, _ = proc.communicate(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            server.output, _ = proc.communicate()
            stuck = f"avocado serve did not stop within {stop_timeout_s} s of SIGINT:\n"
            raise AssertionError(stuck + server.output) from e


def _wait_healthy(server: ServeProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            output = server.proc.stdout.read() if server.proc.stdout else ""
            raise AssertionError(f"avocado serve exited with {server.returncode}:\n{output}")
        try:
            if httpx.get(f"{server.url}/health", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"avocado serve did not come up in {timeout_s} s"
        time.sleep(0.2)
