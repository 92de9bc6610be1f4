"""A sidecar that cleans up after a process which may die without doing it itself.

The throwaway servers of the tests and benchmarks (:mod:`avocado_llm.testing.pgtemp`,
:mod:`avocado_llm.testing.redistemp`) must not outlive the process that started them, however it
ends — SIGKILL and a killed process group included, where no ``finally`` runs. The kernel's
parent-death signal cannot do it for PostgreSQL (``pg_ctl`` daemonizes the postmaster, and the
signal follows the *thread* that forked, not the process), so :class:`Watchdog` starts this
file as a script (standard library only: no package import, a few milliseconds) in a session of
its own, with a pipe from the owner on its standard input. The owner tells it over that pipe,
one JSON object a line, what to undo: ``{"kill": pid, "signal": n, "comm": name}``,
``{"run": argv, "if_exists": path}``, ``{"remove": path}``. The watchdog waits until the owner
is gone — the pipe ends (every copy of its write end is closed: the owner exited, however) or
its parent is no longer the owner (a child forked by the owner may still hold the pipe) — and
then does it all: kills and commands in the order given (twice, a second apart, for a server
whose start was in flight), then removals. An owner that cleans up itself sends ``done`` first
and the watchdog exits doing nothing; a SIGTERM to the watchdog makes it clean up at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.5
"""How often the watchdog checks that its owner is still its parent."""


class Watchdog:
    """The owner's end: start one, register what to undo, :meth:`done` after cleaning up."""

    def __init__(self) -> None:
        read_end, self._pipe = os.pipe()  # both ends close-on-exec: no other child holds them
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(os.getpid())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a signal to the owner's process group spares it
            )
        except BaseException:
            os.close(self._pipe)
            raise
        finally:
            os.close(read_end)

    def kill(self, pid: int, sig: int = signal.SIGKILL, comm: str | None = None) -> None:
        """Send ``sig`` to ``pid`` (only if its name is ``comm``, when given: a pid reused by
        another program is left alone)."""
        self._send({"kill": pid, "signal": int(sig), "comm": comm})

    def run(self, argv: list[str], if_exists: Path | None = None) -> None:
        """Run ``argv`` (only if ``if_exists`` exists then, when given)."""
        self._send({"run": argv, "if_exists": str(if_exists) if if_exists else None})

    def remove(self, path: Path) -> None:
        """Remove the directory ``path`` (after every kill and command)."""
        self._send({"remove": str(path)})

    def done(self) -> None:
        """The owner cleaned up itself: the watchdog exits without doing anything."""
        if self._pipe < 0:
            return
        self._send({"done": True})
        os.close(self._pipe)
        self._pipe = -1
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _send(self, message: dict[str, Any]) -> None:
        if self._pipe < 0:
            raise RuntimeError("the watchdog was released (done)")
        with contextlib.suppress(BrokenPipeError):  # it was killed: nothing more to tell it
            os.write(self._pipe, json.dumps(message).encode() + b"\n")


# --- the watchdog process (this file run as a script) --------------------------------------


class _Terminated(Exception):
    """SIGTERM to the watchdog: clean up now."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _wait_for_owner(owner: int, orders: list[dict[str, Any]]) -> bool:
    """Collect the owner's orders into ``orders`` until it is gone (``True``) or says ``done``
    (``False``)."""
    buffer = b""
    while True:
        ready, _, _ = select.select([0], [], [], POLL_S)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return True
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                order = json.loads(line)
                if order.get("done"):
                    return False
                orders.append(order)
        if os.getppid() != owner:
            return True


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _undo(orders: list[dict[str, Any]]) -> None:
    for order in orders:
        if "kill" in order:
            if order.get("comm") and _comm(order["kill"]) not in (None, order["comm"]):
                continue
            with contextlib.suppress(OSError):
                os.kill(order["kill"], order["signal"])
        elif "run" in order:
            if order.get("if_exists") and not Path(order["if_exists"]).exists():
                continue
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(order["run"], capture_output=True, timeout=60, check=False)


def main(owner: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is the owner's business
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_terminated)
    orders: list[dict[str, Any]] = []
    try:
        if not _wait_for_owner(owner, orders):
            return 0
    except _Terminated:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _clean_up(orders)
    return 0


def _clean_up(orders: list[dict[str, Any]]) -> None:
    _undo(orders)
    time.sleep(1.0)  # a server whose start was in flight when the owner died is up by now
    _undo(orders)
    for order in orders:
        if "remove" in order:
            shutil.rmtree(order["remove"], ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1])))
