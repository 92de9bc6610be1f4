"""Server leases: which server process a hold belongs to, and whether that process is gone.

Every server process registers a row in ``servers`` with a lease (``expires_at``) that its
heartbeat renews every ``lease_s / HEARTBEATS_PER_LEASE`` seconds. The holds and running
idempotency claims it places carry its id. A server counts as **gone** when its lease ran out,
or — on the same machine (same host name, boot and PID namespace) — when its process no longer
exists (a SIGKILL is seen at once, without waiting for the lease). A sweep first deletes the
rows of gone servers (re-checking the expiry in the same statement, so a heartbeat that renewed
just before wins), then releases the open holds whose server has no row (NULL included: holds
from before leases, or placed by a process that never registered). So a live server's holds
are never released; and a server whose renewal finds its row deleted knows that its holds may
have been released, and stops serving them (:class:`ServerLease`).

Times: PostgreSQL's clock (``now()``) for every lease, so servers on several machines need no
synchronised clocks; SQLite (one machine) uses the local UTC clock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from avocado_llm.billing.schema import HoldRow, IdempotencyRecord, ServerRow, UTCDateTime, utcnow

log = logging.getLogger("avocado.billing")

HEARTBEATS_PER_LEASE = 4
"""Renewals per lease period: a lease survives three missed heartbeats."""
FRESH_FRACTION = 0.9
"""A server trusts its own lease for this fraction of ``lease_s`` after the last renewal began."""

_S = ServerRow.__table__.c
_H = HoldRow.__table__.c
_I = IdempotencyRecord.__table__.c
_NOW = bindparam("now", type_=UTCDateTime())


@cache
def host_identity() -> str | None:
    """Where a process id means one process: host name, boot and PID namespace (Linux); None
    where that cannot be told (then only leases tell that a server is gone)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"[:300]


def db_now(conn: Connection) -> datetime:
    """The ledger's time: PostgreSQL's transaction time, else this machine's UTC clock."""
    if conn.dialect.name == "postgresql":
        value = conn.scalar(select(func.now()))
        if isinstance(value, datetime):
            return UTCDateTime().process_result_value(value, conn.dialect) or utcnow()
    return utcnow()


def register(conn: Connection, lease_s: float) -> str:
    """A new server row with a lease of ``lease_s`` seconds; its id."""
    server_id = f"srv_{uuid.uuid4().hex}"
    now = db_now(conn)
    conn.execute(
        insert(ServerRow.__table__),
        {
            "id": server_id,
            "host": host_identity() or "",
            "pid": os.getpid(),
            "started_at": now,
            "expires_at": now + timedelta(seconds=lease_s),
        },
    )
    return server_id


def renew(conn: Connection, server_id: str, lease_s: float) -> bool:
    """Extend the lease; False when the row is gone (a sweep found this server gone)."""
    expires = db_now(conn) + timedelta(seconds=lease_s)
    query = update(ServerRow.__table__).where(_S.id == server_id).values(expires_at=expires)
    return conn.execute(query).rowcount == 1


def unregister(conn: Connection, server_id: str) -> None:
    """Delete the row (a clean shutdown): holds still open become a sweep's to release."""
    conn.execute(delete(ServerRow.__table__).where(_S.id == server_id))


def forget_gone_servers(conn: Connection) -> list[str]:
    """Delete the rows of servers that are gone; their ids."""
    now = db_now(conn)
    expired = delete(ServerRow.__table__).where(_S.expires_at < _NOW).returning(_S.id)
    gone = list(conn.scalars(expired, {"now": now}))
    host = host_identity()
    if host is not None:
        here = conn.execute(select(_S.id, _S.pid).where(_S.host == host)).all()
        dead = [row.id for row in here if row.pid != os.getpid() and not _process_exists(row.pid)]
        if dead:
            conn.execute(delete(ServerRow.__table__).where(_S.id.in_(dead)))
            gone += dead
    return gone


def orphan_open_holds(conn: Connection, older_than_s: float) -> list[str]:
    """Open holds (older than ``older_than_s``) whose server has no row: nobody serves them."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    query = (
        select(_H.id)
        .outerjoin(ServerRow.__table__, _S.id == _H.server_id)
        .where(_H.status == "open", _H.created_at <= cutoff, _S.id.is_(None))
        .order_by(_H.created_at)
    )
    return list(conn.scalars(query))


def purge_orphan_claims(conn: Connection, older_than_s: float) -> int:
    """Drop running idempotency claims (older than ``older_than_s``) whose server has no row,
    so that their retries can run."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    live = select(_S.id).where(_S.id == _I.server_id).exists()
    query = delete(IdempotencyRecord.__table__).where(
        _I.response.is_(None), _I.created_at <= cutoff, ~live
    )
    return conn.execute(query).rowcount


def own_claim(conn: Connection, key_id: str, idem_key: str, server_id: str) -> None:
    """Mark a running claim as served by ``server_id``."""
    conn.execute(
        update(IdempotencyRecord.__table__)
        .where(_I.key_id == key_id, _I.idem_key == idem_key, _I.response.is_(None))
        .values(server_id=server_id)
    )


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True  # cannot tell: let the lease decide
    return True


class ServerLease:
    """This process's lease: registered at :meth:`start`, renewed by a heartbeat thread, which
    also sweeps (releases the holds of servers gone) every ``lease_s``; deleted at :meth:`close`.

    Requests place holds under :attr:`server_id`. :meth:`holds` tells whether holds placed under
    an id are still surely this server's: the id is the current one, and its last renewal began
    less than ``FRESH_FRACTION × lease_s`` ago (no one may release them before ``lease_s``).
    When a renewal finds the row deleted, this server registers again under a new id: holds of
    the old one may have been released, and :meth:`lost` says so.
    """

    def __init__(
        self,
        register: Callable[[], str],
        renew: Callable[[str], bool],
        unregister: Callable[[str], None],
        sweep: Callable[[], int],
        lease_s: float,
    ) -> None:
        self._register, self._renew, self._unregister, self._sweep = (
            register,
            renew,
            unregister,
            sweep,
        )
        self.lease_s = lease_s
        self._lock = threading.Lock()
        self._id = ""
        self._renewed = 0.0  # monotonic time at which the last successful renewal began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def server_id(self) -> str:
        with self._lock:
            return self._id

    def start(self) -> None:
        began = time.monotonic()
        server_id = self._register()
        with self._lock:
            self._id, self._renewed = server_id, began
        self._thread = threading.Thread(target=self._run, name="avocado-lease", daemon=True)
        self._thread.start()

    def holds(self, server_id: str) -> bool:
        """Whether holds placed under ``server_id`` are surely still this server's."""
        with self._lock:
            fresh = time.monotonic() - self._renewed < self.lease_s * FRESH_FRACTION
            return server_id == self._id and fresh

    def lost(self, server_id: str) -> bool:
        """Whether ``server_id`` was found gone (its holds may have been released)."""
        with self._lock:
            return server_id != self._id

    def beat(self) -> None:
        """One renewal (the heartbeat thread calls it; tests may too)."""
        began = time.monotonic()
        current = self.server_id
        if self._renew(current):
            with self._lock:
                if self._id == current:
                    self._renewed = began
            return
        log.error(
            "this server's lease %s was found expired and its holds may have been released "
            "(the process stalled for longer than the lease): its requests in flight stop; "
            "registering again",
            current,
        )
        new_id = self._register()
        with self._lock:
            self._id, self._renewed = new_id, began

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._id:
            self._unregister(self._id)

    def _run(self) -> None:
        interval = self.lease_s / HEARTBEATS_PER_LEASE
        next_sweep = time.monotonic() + self.lease_s
        while not self._stop.wait(interval):
            try:
                self.beat()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.lease_s
                    released = self._sweep()
                    if released:
                        log.warning("released %d hold(s) of server(s) gone", released)
            except Exception:  # a ledger that is down: try again at the next beat
                log.exception("the lease heartbeat failed")
