"""Holds and settlement: the only code that moves money for requests.

Each function below runs inside ONE transaction that the caller opened:

- ``place_hold``: one conditional ``UPDATE accounts SET balance = balance - :amt,
  held = held + :amt WHERE id = :id AND balance >= :amt`` — zero rows means not enough credit,
  and no interleaving of requests or processes can overdraw (the CHECK constraint backs it);
- ``settle_hold`` / ``release_hold``: ``UPDATE holds SET status = … WHERE id = :id AND
  status = 'open'`` decides who closes a hold, so it is closed exactly once; the winner returns
  the unused credit and writes the usage event and ledger entries in the same transaction.

The charge of a settled request is the price quoted at hold time applied to the actual usage,
**capped at the hold**: the hold was the worst case the client agreed to, so usage beyond it
(a miscounting engine) is never billed and can never overdraw.

The statements are built once, with bound parameters: these run for every request.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from avocado_llm.billing.errors import InsufficientCredit, KeyRefused, UnknownPrice
from avocado_llm.billing.money import Price, charge_for, format_usd
from avocado_llm.billing.records import Hold, KeyInfo
from avocado_llm.billing.schema import (
    Account,
    ApiKey,
    HoldRow,
    LedgerEntry,
    ModelPrice,
    UsageEvent,
    UTCDateTime,
    utcnow,
)

_A, _H = Account.__table__.c, HoldRow.__table__.c
_P, _U = ModelPrice.__table__.c, UsageEvent.__table__.c
_PRICE = select(_P.input_per_1m, _P.output_per_1m, _P.per_request).where(
    _P.model == bindparam("model")
)
_K = ApiKey.__table__.c
_KEY_USABLE = (
    select(_K.id)
    .where(
        _K.id == bindparam("kid"),
        _K.revoked_at.is_(None),
        _K.expires_at.is_(None) | (_K.expires_at > bindparam("now", type_=UTCDateTime())),
    )
    .exists()
)
"""The key is neither revoked nor expired *now*: checked in the same statement as the credit,
so a key revoked after the server last looked it up (``serve``'s key cache) pays for nothing."""
_TAKE = (
    update(Account.__table__)
    .where(_A.id == bindparam("aid"), _A.balance >= bindparam("amount"), _KEY_USABLE)
    .values(balance=_A.balance - bindparam("amount"), held=_A.held + bindparam("amount"))
    .returning(_A.id)  # a row back means the key is usable and the credit is now held
)
_GIVE_BACK = (
    update(Account.__table__)
    .where(_A.id == bindparam("aid"))
    .values(balance=_A.balance + bindparam("returned"), held=_A.held - bindparam("amount"))
)
_CLOSE = (
    update(HoldRow.__table__)
    .where(_H.id == bindparam("hid"), _H.status == "open")
    .values(status=bindparam("new_status"), closed_at=bindparam("now", type_=UTCDateTime()))
    .returning(
        _H.account_id,
        _H.key_id,
        _H.model,
        _H.amount,
        _H.request_id,
        _H.input_per_1m,
        _H.output_per_1m,
        _H.per_request,
    )
)
_INSERT_HOLD = insert(HoldRow.__table__)
_INSERT_USAGE = insert(UsageEvent.__table__).returning(_U.id)
_INSERT_ENTRY = insert(LedgerEntry.__table__)
_CHARGE_OF = select(_U.charge).where(_U.hold_id == bindparam("hid"))


def get_price(conn: Connection, model: str) -> Price | None:
    row = conn.execute(_PRICE, {"model": model}).first()
    return Price(*row) if row is not None else None


def all_prices(conn: Connection) -> dict[str, Price]:
    query = select(_P.model, _P.input_per_1m, _P.output_per_1m, _P.per_request).order_by(_P.model)
    return {row[0]: Price(*row[1:]) for row in conn.execute(query)}


def check_key(conn: Connection, key_id: str) -> None:
    """:class:`KeyRefused` unless the key is neither revoked nor expired now."""
    if not conn.scalar(select(_KEY_USABLE), {"kid": key_id, "now": utcnow()}):
        raise KeyRefused


def place_hold(
    conn: Connection,
    key: KeyInfo,
    model: str,
    prompt_tokens: int,
    max_completion_tokens: int,
    request_id: str,
    server_id: str | None = None,
) -> Hold:
    """Set aside the worst-case charge of a request, or raise :class:`InsufficientCredit`.
    ``server_id`` is the server process serving it (see ``leases``): None counts as gone."""
    price = get_price(conn, model)
    if price is None:
        raise UnknownPrice(f"the model {model!r} does not exist or has no price", param="model")
    amount = charge_for(price, prompt_tokens, max_completion_tokens)
    params = {"aid": key.account_id, "amount": amount, "kid": key.key_id, "now": utcnow()}
    if conn.execute(_TAKE, params).first() is None:
        check_key(conn, key.key_id)  # revoked or expired since it was looked up: 401
        available = conn.scalar(select(_A.balance).where(_A.id == key.account_id))
        raise InsufficientCredit(
            f"insufficient credit: this request may cost up to ${format_usd(amount)} "
            f"({prompt_tokens} prompt tokens + max_tokens {max_completion_tokens} at the price "
            f"of {model!r}) and the available balance is ${format_usd(available or 0)}; "
            "add credits or lower max_tokens"
        )
    hold = Hold(f"hold_{uuid.uuid4().hex}", key.account_id, key.key_id, model, amount, request_id)
    conn.execute(
        _INSERT_HOLD,
        {
            "id": hold.id,
            "account_id": hold.account_id,
            "key_id": hold.key_id,
            "model": model,
            "amount": amount,
            "input_per_1m": price.input_per_1m,
            "output_per_1m": price.output_per_1m,
            "per_request": price.per_request,
            "request_id": request_id,
            "status": "open",
            "server_id": server_id,
        },
    )
    _entry(conn, hold.account_id, "hold", -amount, hold_id=hold.id)
    return hold


def settle_hold(
    conn: Connection, hold_id: str, prompt_tokens: int, completion_tokens: int, status: str
) -> tuple[bool, int]:
    """Close an open hold with its usage; ``(closed_now, charge)``.

    When the hold was already closed, nothing moves and ``closed_now`` is False; the charge is
    then the one recorded the first time (0 if the hold was released).
    """
    row = _close(conn, hold_id, "settled")
    if row is None:
        return False, int(conn.scalar(_CHARGE_OF, {"hid": hold_id}) or 0)
    price = Price(row.input_per_1m, row.output_per_1m, row.per_request)
    charge = min(charge_for(price, prompt_tokens, completion_tokens), row.amount)
    conn.execute(
        _GIVE_BACK, {"aid": row.account_id, "amount": row.amount, "returned": row.amount - charge}
    )
    event_id = conn.execute(
        _INSERT_USAGE,
        {
            "request_id": row.request_id,
            "hold_id": hold_id,
            "account_id": row.account_id,
            "key_id": row.key_id,
            "model": row.model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "charge": charge,
            "status": status,
        },
    ).scalar_one()
    _entry(conn, row.account_id, "release", row.amount, hold_id=hold_id)
    _entry(conn, row.account_id, "charge", -charge, hold_id=hold_id, usage_event_id=event_id)
    return True, charge


def release_hold(conn: Connection, hold_id: str, reason: str) -> bool:
    """Close an open hold without usage and return all of it; False if already closed."""
    row = _close(conn, hold_id, "released")
    if row is None:
        return False
    conn.execute(_GIVE_BACK, {"aid": row.account_id, "amount": row.amount, "returned": row.amount})
    _entry(conn, row.account_id, "release", row.amount, hold_id=hold_id, reason=reason)
    return True


def _close(conn: Connection, hold_id: str, status: str) -> Any:
    """Close the hold if it is still open: its row, or None when someone closed it first."""
    return conn.execute(_CLOSE, {"hid": hold_id, "new_status": status, "now": utcnow()}).first()


def _entry(
    conn: Connection,
    account_id: int,
    kind: str,
    amount: int,
    *,
    hold_id: str | None = None,
    usage_event_id: int | None = None,
    reason: str | None = None,
) -> None:
    conn.execute(
        _INSERT_ENTRY,
        {
            "account_id": account_id,
            "kind": kind,
            "amount": amount,
            "hold_id": hold_id,
            "usage_event_id": usage_event_id,
            "reason": reason,
        },
    )
