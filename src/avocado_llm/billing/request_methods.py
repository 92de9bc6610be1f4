"""``Billing``'s methods for the requests a server runs: authenticate a key, price, hold the
worst case, settle or release it — and the idempotency records of retried requests."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from avocado_llm.billing import idempotency as idem
from avocado_llm.billing import keys, leases, ledger
from avocado_llm.billing.base import TOUCH_INTERVAL_S, BillingBase
from avocado_llm.billing.errors import BillingError, HoldClosed
from avocado_llm.billing.money import Price, charge_for
from avocado_llm.billing.records import Hold, KeyInfo

STATUS_LENGTH = 32  # usage_events.status


class RequestMethods(BillingBase):
    """Mixed into ``Billing``: a request's money, from its key to its settlement."""

    def key_digest(self, api_key: str) -> str:
        """The HMAC the ledger stores for ``api_key`` (a cache key that is not the key)."""
        return keys.key_hmac(self._need_secret(), api_key)

    def authenticate(self, api_key: str) -> KeyInfo | None:
        """The key's :class:`KeyInfo`; None when unknown, revoked or expired. Never logs it."""
        with self._reader.begin() as conn:
            info = keys.lookup(conn, self._need_secret(), api_key)
        if info is not None and self._due_touch(info.key_id):
            with self._write() as conn:
                keys.touch(conn, info.key_id, TOUCH_INTERVAL_S)
        return info

    def price(self, model: str) -> Price | None:
        with self._reader.begin() as conn:
            return ledger.get_price(conn, model)

    def prices(self) -> dict[str, Price]:
        """Every priced model (what may be sold), by name."""
        with self._reader.begin() as conn:
            return ledger.all_prices(conn)

    def charge_for(self, price: Price, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-USD for the usage, rounded up once to a whole micro-USD (see ``money``)."""
        return charge_for(price, prompt_tokens, completion_tokens)

    def hold(
        self,
        key: KeyInfo,
        model: str,
        prompt_tokens: int,
        max_completion_tokens: int,
        request_id: str,
        server_id: str | None = None,
    ) -> Hold:
        """Set aside the worst case of a request; :class:`InsufficientCredit` if it is not there.
        ``server_id``: the lease of the server process serving it (:meth:`register_server`);
        without one the hold counts as a crash's, which any starting server releases."""
        try:
            with self._write() as conn:
                return ledger.place_hold(
                    conn, key, model, prompt_tokens, max_completion_tokens, request_id, server_id
                )
        except IntegrityError as e:
            raise BillingError(f"cannot place a hold for request {request_id!r}: {e.orig}") from e

    def settle(
        self,
        hold: Hold,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        status: str = "ok",
        idempotency: tuple[str, str, bytes] | None = None,
        expect_open: bool = False,
    ) -> int:
        """Charge the actual usage (capped at the hold), return the rest, write the usage event
        and ledger entries — and store ``(idem_key, body_hash, response)`` if given — in one
        transaction. Exactly once: settling a closed hold changes nothing and returns the
        charge recorded the first time (0 if it was released) — or, with ``expect_open``,
        raises :class:`HoldClosed` (the server must then not give the answer away)."""
        status = status[:STATUS_LENGTH]  # an odd status must never stop a request's billing
        with self._write() as conn:
            closed_now, charge = ledger.settle_hold(
                conn, hold.id, prompt_tokens, completion_tokens, status
            )
            if not closed_now and expect_open:
                raise HoldClosed(
                    f"the hold of request {hold.request_id!r} was released before it was "
                    "settled (a server process restarted while it ran); nothing was charged: "
                    "retry the request"
                )
            if closed_now and idempotency is not None:
                idempotency_key, body_hash, response = idempotency
                idem.save(conn, hold.key_id, idempotency_key, body_hash, response)
            return charge

    def release(self, hold: Hold) -> None:
        """Nothing was produced: close the hold and return all of it (no usage event)."""
        with self._write() as conn:
            ledger.release_hold(conn, hold.id, "released: nothing produced")

    # --- idempotency ----------------------------------------------------------------------

    def idempotent_response(self, key_id: str, idem_key: str, body_hash: str) -> bytes | None:
        """The stored answer of a retry; :class:`IdempotencyConflict` for another body."""
        with self._reader.begin() as conn:
            return idem.stored(conn, key_id, idem_key, body_hash)

    def claim_idempotency(
        self, key_id: str, idem_key: str, body_hash: str, server_id: str | None = None
    ) -> bytes | None:
        """Like :meth:`idempotent_response`, but when there is no answer yet, mark the key as
        in progress so a concurrent retry gets :class:`IdempotencyInProgress` (409). After
        a claim, either :meth:`settle` with ``idempotency=`` or :meth:`abandon_idempotency`.
        ``server_id``: the server running it; a sweep drops the claim once that one is gone
        (at once when None)."""
        with self._write() as conn:
            ledger.check_key(conn, key_id)  # a cached key revoked since: no stored answer either
            stored = idem.claim(conn, key_id, idem_key, body_hash)
            if stored is None and server_id is not None:
                leases.own_claim(conn, key_id, idem_key, server_id)
            return stored

    def abandon_idempotency(self, key_id: str, idem_key: str) -> None:
        """Forget an in-progress claim (the request failed before an answer existed)."""
        with self._write() as conn:
            idem.abandon(conn, key_id, idem_key)

    def purge_idempotency(self, older_than_s: float = idem.KEEP_S) -> int:
        """Delete idempotency records older than ``older_than_s`` (default 24 h)."""
        with self._write() as conn:
            return idem.purge(conn, older_than_s)
