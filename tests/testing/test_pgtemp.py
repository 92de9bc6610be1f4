"""The throwaway PostgreSQL server dies with the process that started it, however that ends.

A real owner process starts :class:`TempPostgres` and is then SIGKILLed (it cannot clean up):
the server must stop, its port close and its directory go, within a generous bound. A second
owner is killed together with its whole process group, as ``timeout`` or a CI runner may do.
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

from avocado_llm.testing.pgtemp import TempPostgres

GONE_WITHIN_S = 30.0
"""Generous: the watchdog notices within half a second; the bound is for a loaded machine."""

OWNER = """
import sys, time
from avocado_llm.testing.pgtemp import TempPostgres
pg = TempPostgres().start()
print(pg.port, pg.dir, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_owner(**popen: object) -> tuple[subprocess.Popen[str], int, Path, int]:
    """An owner process with a running server: (process, port, directory, postmaster pid)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, **popen
    )
    ready, _, _ = select.select([owner.stdout], [], [], 120)
    assert ready and owner.stdout is not None, "the owner did not start PostgreSQL in 120 s"
    port, directory = owner.stdout.readline().split()
    pid_file = Path(directory) / "data" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    assert alive(postmaster) and accepts(int(port))
    return owner, int(port), Path(directory), postmaster


def wait_gone(postmaster: int, port: int, directory: Path) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and (alive(postmaster) or directory.exists()):
        time.sleep(0.2)
    assert not alive(postmaster), f"postmaster {postmaster} outlived its owner"
    assert not accepts(port), f"something still listens on {port}"
    assert not directory.exists(), f"{directory} outlived its owner"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_sigkilled_owner_takes_its_postgres_with_it() -> None:
    owner, port, directory, postmaster = start_owner()
    owner.kill()
    owner.wait()
    wait_gone(postmaster, port, directory)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_an_owner_killed_with_its_process_group_takes_its_postgres_with_it() -> None:
    owner, port, directory, postmaster = start_owner(start_new_session=True)
    os.killpg(owner.pid, signal.SIGKILL)
    owner.wait()
    wait_gone(postmaster, port, directory)


def test_stop_leaves_nothing_running() -> None:
    pg = TempPostgres().start()
    assert pg.dir is not None and pg._watchdog is not None
    directory, port, watchdog = pg.dir, pg.port, pg._watchdog.process
    postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    pg.create_database("x")
    pg.stop()
    assert not alive(postmaster) and not accepts(port) and not directory.exists()
    assert watchdog.poll() == 0  # released: it exited without doing anything
    pg.stop()  # twice is fine
