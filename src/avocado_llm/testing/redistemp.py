"""A throwaway Redis server on loopback, for tests and benchmarks of shared rate limits.

Runs Debian's ``redis-server`` (``apt-get install -y redis-server``; ``make test`` does it) on
127.0.0.1 and a free port, in a fresh temp dir, with no persistence (no RDB snapshots, no AOF).
A :class:`~avocado_llm.testing.watchdog.Watchdog` stops the server and removes the directory if
the process that started it dies without doing so (SIGKILL, a killed process group), so a killed
test run leaves no server behind. (Not the kernel's parent-death signal: it fires when the
*thread* that started the server ends, which may be long before the process does.)::

    with TempRedis() as r:
        r.url                       # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from avocado_llm.testing.watchdog import Watchdog

INSTALL_HINT = "install Debian's Redis server: `apt-get install -y redis-server`"


class RedisNotFound(RuntimeError):
    """No ``redis-server`` binary on this machine."""


def find_redis_server() -> Path:
    """``redis-server`` on PATH, else Debian's ``/usr/bin/redis-server``."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if found is None:
        raise RedisNotFound(
            f"redis-server was not found on PATH; {INSTALL_HINT} (`make test` does this)"
        )
    return Path(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    """True when a Redis server answers PING on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class TempRedis:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`; :attr:`url` in between."""

    def __init__(self, binary: Path | None = None, start_timeout_s: float = 20.0) -> None:
        self.binary = binary or find_redis_server()
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (database 0)."""
        if self._process is None:
            raise RuntimeError("TempRedis is not running: use `with TempRedis() as r:`")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TempRedis:
        self.dir = Path(tempfile.mkdtemp(prefix="avocado-redis-"))
        self._watchdog = Watchdog()
        self._watchdog.remove(self.dir)
        errors = []
        for _ in range(5):  # another process may take the free port before the server binds it
            try:
                self._launch(_free_port())
                return self
            except RuntimeError as e:
                errors.append(str(e))
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + "\n".join(errors))

    def _launch(self, port: int) -> None:
        assert self.dir is not None and self._watchdog is not None
        log = self.dir / "redis.log"
        command = [
            str(self.binary),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(log), "--databases", "16",
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._watchdog.kill(process.pid, signal.SIGKILL, comm="redis-server")
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _ping(port):
                self.port, self._process = port, process
                return
            time.sleep(0.02)
        _terminate(process)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server on port {port} (exit {process.returncode}): {tail}")

    def stop(self) -> None:
        if self._process is not None:
            _terminate(self._process)
            self._process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._watchdog is not None:
            self._watchdog.done()
            self._watchdog = None

    def __enter__(self) -> TempRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
