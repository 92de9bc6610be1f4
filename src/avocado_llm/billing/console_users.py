"""Web console credentials: users (customers of one account, or operators) and their sessions.

Console credentials are distinct from API keys: a username and a password, stored as a salted
scrypt hash (``scrypt$n$r$p$salt$hash``, standard library only). A signed-in browser holds a
random session token in a cookie; the database keeps only the token's SHA-256 (a stolen
database yields no usable session) with the session's CSRF token and expiry.

Sign-in attempts are counted here too, per username and per client address, *before* the
password is checked and in one atomic statement, so concurrent attempts and several server
processes share one count. A just-created API key waits here for the one page that shows it
(bound to the session, sealed under the server secret, deleted when read), never in a cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, case, delete, insert, literal, select, update

from avocado_llm.billing.database import insert_or
from avocado_llm.billing.errors import BillingError, NotFound
from avocado_llm.billing.schema import (
    Account,
    ConsoleAttempt,
    ConsoleFlash,
    ConsoleSession,
    ConsoleUser,
    UTCDateTime,
    utcnow,
)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~50 ms per check
SALT_BYTES = 16
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # refuse before hashing: scrypt of a huge input is a cheap DoS
SESSION_TTL = timedelta(hours=12)
FLASH_TTL = timedelta(minutes=5)  # from creating a key to the page that shows it
_DUMMY_HASH: str | None = None  # hashed once: unknown users cost as much as wrong passwords


@dataclass(frozen=True)
class ConsoleUserInfo:
    """A console user as the console sees it (never the password hash)."""

    id: int
    username: str
    account_id: int | None
    account: str | None
    is_operator: bool


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison of the digests)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = 32) -> bytes:
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"passwords are at most {MAX_PASSWORD} characters")
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20, dklen=dklen
    )


def generate_password() -> str:
    """A random password (about 120 bits), easy to copy: URL-safe characters."""
    return secrets.token_urlsafe(15)


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_USER = select(
    ConsoleUser.id,
    ConsoleUser.username,
    ConsoleUser.account_id,
    Account.name.label("account"),
    ConsoleUser.is_operator,
    ConsoleUser.password_hash,
    ConsoleUser.disabled_at,
).outerjoin(Account, Account.id == ConsoleUser.account_id)


def _info(row: object) -> ConsoleUserInfo:
    return ConsoleUserInfo(
        id=row.id,  # type: ignore[attr-defined]
        username=row.username,  # type: ignore[attr-defined]
        account_id=row.account_id,  # type: ignore[attr-defined]
        account=row.account,  # type: ignore[attr-defined]
        is_operator=bool(row.is_operator),  # type: ignore[attr-defined]
    )


def create_user(
    conn: Connection,
    username: str,
    password: str,
    *,
    account: str | None = None,
    operator: bool = False,
) -> int:
    """A new console user; a customer names its ``account``, an operator may name none."""
    username = username.strip()
    if not username:
        raise ValueError("a console user needs a non-empty username")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"console passwords need at least {MIN_PASSWORD} characters")
    account_id = None
    if account is not None:
        account_id = conn.scalar(select(Account.id).where(Account.name == account))
        if account_id is None:
            raise NotFound(
                f"no account named {account!r}; create it with `avocado admin accounts create`"
            )
    elif not operator:
        raise ValueError("a customer console user needs an account (--account NAME)")
    taken = conn.scalar(select(ConsoleUser.id).where(ConsoleUser.username == username))
    if taken is not None:
        raise BillingError(f"a console user named {username!r} already exists")
    user_id = conn.execute(
        insert(ConsoleUser)
        .values(
            username=username,
            account_id=account_id,
            is_operator=operator,
            password_hash=hash_password(password),
        )
        .returning(ConsoleUser.id)
    ).scalar_one()
    return int(user_id)


def check_password(conn: Connection, username: str, password: str) -> ConsoleUserInfo | None:
    """The user when ``password`` is right and the user is enabled; else None. Unknown users
    cost one scrypt too, so timing does not tell which usernames exist."""
    global _DUMMY_HASH
    row = conn.execute(_USER.where(ConsoleUser.username == username.strip())).first()
    if row is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(generate_password())
        verify_password(password, _DUMMY_HASH)
        return None
    if not verify_password(password, row.password_hash) or row.disabled_at is not None:
        return None
    return _info(row)


def list_users(conn: Connection) -> list[dict[str, object]]:
    rows = conn.execute(
        select(
            ConsoleUser.id,
            ConsoleUser.username,
            Account.name.label("account"),
            ConsoleUser.is_operator,
            ConsoleUser.created_at,
            ConsoleUser.last_login_at,
            ConsoleUser.disabled_at,
        )
        .outerjoin(Account, Account.id == ConsoleUser.account_id)
        .order_by(ConsoleUser.username)
    )
    return [dict(row._asdict()) for row in rows]


def disable_user(conn: Connection, username: str) -> None:
    """Disable a console user and end its sessions."""
    user_id = conn.scalar(select(ConsoleUser.id).where(ConsoleUser.username == username))
    if user_id is None:
        raise NotFound(f"no console user named {username!r}")
    conn.execute(update(ConsoleUser).where(ConsoleUser.id == user_id).values(disabled_at=utcnow()))
    conn.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))


def start_session(conn: Connection, user_id: int, ttl: timedelta = SESSION_TTL) -> tuple[str, str]:
    """``(token, csrf)`` of a new session: the token goes in the cookie, only its hash here."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()
    conn.execute(
        insert(ConsoleSession).values(
            id=_token_id(token), user_id=user_id, csrf=csrf, created_at=now, expires_at=now + ttl
        )
    )
    conn.execute(update(ConsoleUser).where(ConsoleUser.id == user_id).values(last_login_at=now))
    conn.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))  # tidy up
    return token, csrf


def session_user(conn: Connection, token: str) -> tuple[ConsoleUserInfo, str] | None:
    """``(user, csrf)`` of a live session; None when unknown, expired or the user disabled."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        _USER.add_columns(ConsoleSession.csrf, ConsoleSession.expires_at)
        .join(ConsoleSession, ConsoleSession.user_id == ConsoleUser.id)
        .where(ConsoleSession.id == _token_id(token))
    ).first()
    if row is None or row.expires_at <= utcnow() or row.disabled_at is not None:
        return None
    return _info(row), row.csrf


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(ConsoleSession).where(ConsoleSession.id == _token_id(token)))
    conn.execute(delete(ConsoleFlash).where(ConsoleFlash.session_id == _token_id(token)))


# --- sign-in attempts ---------------------------------------------------------------------


def count_attempts(conn: Connection, keys: Sequence[str], window: timedelta) -> list[int]:
    """Count one attempt for each key (``user:…``, ``ip:…``) and return the counts, this one
    included. A key's window starts at its first attempt and lasts ``window``. One
    ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per key: atomic on PostgreSQL as on SQLite,
    so no two concurrent attempts read the same count."""
    now = utcnow()
    stale = ConsoleAttempt.window_start <= now - window
    counts = []
    for key in keys:
        insert_stmt = insert_or(conn, ConsoleAttempt).values(
            id=_token_id(key), count=1, window_start=now
        )
        stmt = insert_stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "count": case((stale, 1), else_=ConsoleAttempt.count + 1),
                "window_start": case(
                    (stale, literal(now, UTCDateTime)), else_=ConsoleAttempt.window_start
                ),
            },
        ).returning(ConsoleAttempt.count)
        counts.append(int(conn.execute(stmt).scalar_one()))
    conn.execute(delete(ConsoleAttempt).where(ConsoleAttempt.window_start <= now - 2 * window))
    return counts


def attempt_counts(conn: Connection, keys: Sequence[str], window: timedelta) -> list[int]:
    """The current counts of ``keys`` (0 once a window is over), counting nothing."""
    rows = dict(
        conn.execute(
            select(ConsoleAttempt.id, ConsoleAttempt.count).where(
                ConsoleAttempt.id.in_([_token_id(k) for k in keys]),
                ConsoleAttempt.window_start > utcnow() - window,
            )
        ).all()
    )
    return [int(rows.get(_token_id(k), 0)) for k in keys]


def forget_attempts(conn: Connection, key: str) -> None:
    """Start ``key`` afresh (a user who signed in)."""
    conn.execute(delete(ConsoleAttempt).where(ConsoleAttempt.id == _token_id(key)))


def uncount_attempt(conn: Connection, key: str) -> None:
    """Take back one attempt of ``key`` (a client address that signed in successfully)."""
    conn.execute(
        update(ConsoleAttempt)
        .where(ConsoleAttempt.id == _token_id(key), ConsoleAttempt.count > 0)
        .values(count=ConsoleAttempt.count - 1)
    )


# --- a new key on its way to its one display ------------------------------------------------


def _keystream(secret: bytes, nonce: str, length: int) -> bytes:
    """HMAC-SHA256 in counter mode under the server secret: a stream cipher (nonces are random
    and used once) that only a process holding the secret can undo."""
    out = b""
    for counter in range((length + 31) // 32):
        label = f"avocado-console-flash:{nonce}:{counter}".encode()
        out += hmac.new(secret, label, hashlib.sha256).digest()
    return out[:length]


def put_flash(conn: Connection, secret: bytes, session_token: str, key_id: str, key: str) -> None:
    """Keep ``key`` for the next :func:`take_flash` of this session (replacing any other)."""
    data = key.encode("utf-8")
    nonce = secrets.token_hex(16)
    sealed = bytes(a ^ b for a, b in zip(data, _keystream(secret, nonce, len(data)), strict=True))
    now = utcnow()
    values: dict[str, object] = {"key_id": key_id, "nonce": nonce, "sealed": sealed.hex()}
    values["expires_at"] = now + FLASH_TTL
    conn.execute(delete(ConsoleFlash).where(ConsoleFlash.expires_at <= now))
    conn.execute(
        insert_or(conn, ConsoleFlash)
        .values(session_id=_token_id(session_token), **values)
        .on_conflict_do_update(index_elements=["session_id"], set_=values)
    )


def take_flash(conn: Connection, secret: bytes, session_token: str) -> tuple[str, str] | None:
    """``(key_id, key)`` kept for this session, deleted as it is read; None if there is none
    (or it expired). ``DELETE … RETURNING``: two concurrent reads cannot both get it."""
    row = conn.execute(
        delete(ConsoleFlash)
        .where(ConsoleFlash.session_id == _token_id(session_token))
        .returning(
            ConsoleFlash.key_id, ConsoleFlash.nonce, ConsoleFlash.sealed, ConsoleFlash.expires_at
        )
    ).first()
    if row is None or row.expires_at <= utcnow():
        return None
    sealed = bytes.fromhex(row.sealed)
    stream = _keystream(secret, row.nonce, len(sealed))
    key = bytes(a ^ b for a, b in zip(sealed, stream, strict=True)).decode("utf-8")
    return row.key_id, key
