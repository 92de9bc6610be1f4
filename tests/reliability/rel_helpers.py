"""Shared by the reliability tests: real server processes on loopback in front of a fake
upstream (the clients and the ledger audit are in ``rel_load``).

    with FakeUpstream() as upstream, Zygote() as zygote:
        server = ServerProcess(zygote, port, upstream.url, database_url, log)
        server.start()             # a forked `avocado serve` process, healthy
        server.kill()              # SIGKILL
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from avocado_llm.billing import Billing, Price

HERE = Path(__file__).resolve().parent
SECRET = "reliability-secret-not-for-production"
MODEL = "fake"
PRICE = Price(input_per_1m=1_000_000, output_per_1m=3_000_000, per_request=7)
"""1 µ$ per prompt token, 3 µ$ per completion token, 7 µ$ per request."""
AVOCADO = [sys.executable, "-m", "avocado_llm.cli"]


def die_with_parent() -> None:
    """In a child process (``preexec_fn``): be killed when the process that started it dies,
    so that no server outlives a test run that was itself killed (Linux; elsewhere a no-op)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{what} did not listen on {port} in 60 s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class FakeUpstream:
    """``fake_upstream.py`` in a process of its own, on 127.0.0.1 and a free port."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.delay_s = delay_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeUpstream:
        script = str(HERE / "fake_upstream.py")
        command = [sys.executable, script, str(self.port), str(self.delay_s)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            _wait_listening(self.port, self.proc, "the fake upstream")
        except BaseException:
            _stop(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc)


class Zygote:
    """``zygote.py``: forks ``avocado serve`` processes that start in a fraction of a second."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.pids: list[int] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Zygote:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "zygote.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        return self

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        with self._lock:
            self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        assert line, "the zygote died"
        pid = int(json.loads(line)["pid"])
        self.pids.append(pid)
        return pid

    def kill(self, pid: int) -> None:
        """SIGKILL one of its children, and wait until it is gone."""
        _kill(pid)
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
            time.sleep(0.01)

    def run(self, argv: list[str], log: Path, timeout_s: float = 600) -> int:
        """Run an ``avocado`` command to its end; its exit code."""
        pid = self.spawn(argv, {}, log)
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            assert time.monotonic() < deadline, f"avocado {argv[0]} ran over {timeout_s} s"
            time.sleep(0.05)
        return int(Path(f"{log}.rc").read_text())

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            _kill(pid)
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class ServerProcess:
    """One ``avocado serve --upstream`` process on a fixed port, started by the zygote (or as
    a plain subprocess of the real command when ``zygote`` is None)."""

    zygote: Zygote | None
    port: int
    upstream_url: str
    database_url: str
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return ["serve", "--upstream", self.upstream_url, "--model-name", MODEL,
                "--database-url", self.database_url, "--port", str(self.port),
                "--host", "127.0.0.1"]  # fmt: skip

    def start(self) -> None:
        env = {"AVOCADO_SECRET": SECRET, **self.extra_env}
        if self.zygote is not None:
            self.pid = self.zygote.spawn(self.argv(), env, self.log)
        else:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [*AVOCADO, *self.argv()], stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, **env}, start_new_session=True,
                    preexec_fn=die_with_parent,
                )  # fmt: skip
            self.pid = self.proc.pid
        self.starts += 1
        self.wait_healthy()

    def wait_healthy(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.pid is not None and self.alive(), self._died()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no /health in {timeout_s} s: {self._died()}"
            time.sleep(0.05)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _alive(self.pid)

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.pid is not None
        _kill(self.pid)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(self.pid):
            assert time.monotonic() < deadline, f"pid {self.pid} survived SIGKILL"
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it hangs."""
        if self.pid is None or not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while self.alive() and time.monotonic() < deadline:
            if self.proc is not None:
                self.proc.poll()
            time.sleep(0.05)
        if self.alive():
            self.kill()

    def _died(self) -> str:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return f"the server on port {self.port} died or hangs; its log ends:\n{tail}"


@contextmanager
def running(servers: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """Start the servers; kill whatever is left of them at the end, whatever happened."""
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            if server.pid is not None and server.alive():
                server.kill()


def prepare_ledger(database_url: str, credits: int, account: str = "acme") -> str:
    """Migrate, price the fake model, create the account with ``credits``; returns a new key."""
    billing = Billing(database_url, SECRET)
    try:
        billing.migrate()
        billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
        billing.create_account(account, credits)
        return billing.create_key(account)[1]
    finally:
        billing.close()


@dataclass
class Gateway:
    """One real ``avocado serve --upstream`` process (the command itself, its output in
    ``log``) on a SQLite ledger, with keys of every kind."""

    url: str
    database_url: str
    log: Path
    key: str
    """Account ``acme``'s key (logprobs and n ≤ 4 allowed, so that fuzzing reaches them)."""
    other_key: str
    """Account ``globex``'s key."""
    revoked_key: str
    expired_key: str
    restricted_key: str
    """An ``acme`` key that may only call a model this server does not serve."""
    used: list[str] = field(default_factory=list)
    """Every key-like secret sent so far: none may appear in the log."""

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def balance(self, account: str = "acme") -> int:
        billing = Billing(self.database_url, SECRET)
        try:
            return billing.balance(account)
        finally:
            billing.close()
