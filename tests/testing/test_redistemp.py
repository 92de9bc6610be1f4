"""The throwaway Redis server dies with the process that started it, however that ends.

A real owner process starts :class:`TempRedis` and is then SIGKILLed (it cannot clean up): the
server must stop, its port close and its directory go, within a generous bound; the same when
the owner is killed together with its process group, or started the server from a thread that
has ended since (the kernel's parent-death signal follows the thread, not the process).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avocado_llm.testing.redistemp import TempRedis

GONE_WITHIN_S = 30.0
"""Generous: the watchdog notices within half a second; the bound is for a loaded machine."""

OWNER = """
import sys, threading, time
from avocado_llm.testing.redistemp import TempRedis
servers = []
if sys.argv[1] == "thread":  # started from a thread that ends before the owner does
    worker = threading.Thread(target=lambda: servers.append(TempRedis().start()))
    worker.start()
    worker.join()
else:
    servers.append(TempRedis().start())
r = servers[0]
print(r.port, r.dir, r._process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_owner(how: str = "main", **popen: object) -> tuple[subprocess.Popen[str], int, Path, int]:
    """An owner process with a running server: (process, port, directory, server pid)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, how], stdout=subprocess.PIPE, text=True, **popen
    )
    ready, _, _ = select.select([owner.stdout], [], [], 60)
    assert ready and owner.stdout is not None, "the owner did not start redis-server in 60 s"
    port, directory, pid = owner.stdout.readline().split()
    assert alive(int(pid)) and pong(int(port))
    return owner, int(port), Path(directory), int(pid)


def wait_gone(pid: int, port: int, directory: Path) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and (alive(pid) or directory.exists()):
        time.sleep(0.2)
    assert not alive(pid), f"redis-server {pid} outlived its owner"
    assert not pong(port), f"a Redis server still answers on {port}"
    assert not directory.exists(), f"{directory} outlived its owner"


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_a_sigkilled_owner_takes_its_redis_with_it() -> None:
    owner, port, directory, pid = start_owner()
    owner.kill()
    owner.wait()
    wait_gone(pid, port, directory)


def test_an_owner_killed_with_its_process_group_takes_its_redis_with_it() -> None:
    owner, port, directory, pid = start_owner(start_new_session=True)
    os.killpg(owner.pid, signal.SIGKILL)
    owner.wait()
    wait_gone(pid, port, directory)


def test_a_server_started_from_a_finished_thread_lives_until_its_owner_dies() -> None:
    owner, port, directory, pid = start_owner("thread")
    time.sleep(1.0)  # a parent-death signal would have fired when the thread ended
    assert alive(pid) and pong(port)
    owner.kill()
    owner.wait()
    wait_gone(pid, port, directory)


def test_stop_leaves_nothing_running() -> None:
    r = TempRedis().start()
    assert r.dir is not None and r._process is not None
    directory, port, pid = r.dir, r.port, r._process.pid
    r.stop()
    assert not alive(pid) and not pong(port) and not directory.exists()
    r.stop()  # twice is fine
