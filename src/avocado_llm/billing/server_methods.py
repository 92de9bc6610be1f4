"""``Billing``'s methods for server processes: their leases (see ``leases``), and the sweep
that releases the holds of servers that are gone."""

from __future__ import annotations

from avocado_llm.billing import leases, ledger
from avocado_llm.billing.base import BillingBase


class ServerMethods(BillingBase):
    """Mixed into ``Billing``: server leases and the sweep of their holds."""

    def release_stale_holds(self, older_than_s: float = 0) -> int:
        """Release the holds of server processes that are gone (call at start-up, and now and
        then: a sweep); returns how many.

        A server is gone when its lease ran out or its process no longer exists (see
        ``leases``); holds without a server (placed without :meth:`register_server`, or before
        leases existed) count as gone. The holds of live servers are never released, so
        several servers may share the database. Only holds older than ``older_than_s`` are
        released. Running idempotency claims of gone servers are dropped too, so their retries
        can run.
        """
        with self._write() as conn:
            leases.forget_gone_servers(conn)
        with self._reader.begin() as conn:
            stale = leases.orphan_open_holds(conn, older_than_s)
        released = 0
        for hold_id in stale:  # one short transaction each: no long write lock at start-up
            with self._write() as conn:
                released += ledger.release_hold(conn, hold_id, "released: its server is gone")
        with self._write() as conn:
            leases.purge_orphan_claims(conn, older_than_s)
        return released

    def register_server(self, lease_s: float) -> str:
        """A lease for this server process (a ``servers`` row); its id, for :meth:`hold`."""
        with self._write() as conn:
            return leases.register(conn, lease_s)

    def renew_server(self, server_id: str, lease_s: float) -> bool:
        """Renew the lease; False when a sweep found the server gone (its holds may be
        released: the server must stop serving them)."""
        with self._write() as conn:
            return leases.renew(conn, server_id, lease_s)

    def unregister_server(self, server_id: str) -> None:
        """End the lease (a clean shutdown): holds still open become a sweep's to release."""
        with self._write() as conn:
            leases.unregister(conn, server_id)

    def server_lease(self, lease_s: float, older_than_s: float = 0) -> leases.ServerLease:
        """This process's lease, not yet started: its heartbeat renews it and sweeps
        (:meth:`release_stale_holds` with ``older_than_s``) every ``lease_s``."""
        return leases.ServerLease(
            register=lambda: self.register_server(lease_s),
            renew=lambda server_id: self.renew_server(server_id, lease_s),
            unregister=self.unregister_server,
            sweep=lambda: self.release_stale_holds(older_than_s),
            lease_s=lease_s,
        )
