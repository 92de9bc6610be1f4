"""A throwaway PostgreSQL cluster on loopback, for tests and benchmarks of the ledger.

Uses the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``) or
those on PATH. ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` user. The cluster lives in a fresh directory under the temp dir, listens on
127.0.0.1 only, trusts local connections, and skips fsync (its data is thrown away). A
:class:`~avocado_llm.testing.watchdog.Watchdog` stops the server and removes the directory if
the process that started it dies without doing so (SIGKILL, a killed process group)::

    with TempPostgres() as pg:
        url = pg.create_database("ledger")     # postgresql+psycopg://postgres@127.0.0.1:…/ledger
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from avocado_llm.testing.watchdog import Watchdog

INSTALL_HINT = "install Debian's PostgreSQL server: `apt-get install -y postgresql`"


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin``, else where ``initdb`` is on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None or not Path(initdb).with_name("pg_ctl").exists():
        raise PostgresNotFound(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found in "
            f"/usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT} (`make test` does this)"
        )
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`; databases in between."""

    def __init__(self, bindir: Path | None = None, max_connections: int = 300) -> None:
        self.bindir = bindir or find_bindir()
        self.max_connections = max_connections
        self.port = 0
        self.dir: Path | None = None
        self._watchdog: Watchdog | None = None

    def start(self) -> TempPostgres:
        self.dir = Path(tempfile.mkdtemp(prefix="avocado-pg-"))
        self._watchdog = Watchdog()
        self._watchdog.remove(self.dir)
        as_root = os.geteuid() == 0
        if as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self.port = _free_port()
        options = (
            f"-k {self.dir} -p {self.port} -h 127.0.0.1 -c max_connections={self.max_connections}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self.dir / "server.log"
        self._watchdog.run(
            self._command("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"),
            if_exists=data / "postmaster.pid",
        )
        try:
            self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        except RuntimeError as e:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"{e}\nserver log:\n{tail}") from None
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template`` if given); returns its URL."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._admin(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        if self._watchdog is not None:
            self._watchdog.done()
            self._watchdog = None

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _admin(self, query: sql.Composable) -> None:
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(query)

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:  # initdb and pg_ctl refuse root
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, tool: str, *args: str) -> None:
        command = self._command(tool, *args)
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir)
        if done.returncode != 0:
            output = done.stderr.strip() or done.stdout.strip()
            raise RuntimeError(f"{tool} failed (exit {done.returncode}): {output}")
