"""Secrets never reach a file or a terminal: the one place that scrubs them.

An endpoint teacher registers what it must keep secret — its API key, the credentials of its
``base_url`` (user, password, query values) and the Basic-auth header made of them — with
:func:`add_secret`; :func:`redact` then replaces every registered secret, and anything that looks
like a credential header (``Bearer …``, ``Basic …``, ``api_key=…``), with ``***``. Every teacher
error message (:class:`~avocado_llm.teachers.base.TeacherError`), every failure reason the
harvest writes to ``failures.jsonl`` and every line it prints go through :func:`redact`; so do
httpx's log records. :func:`public_url` is a ``base_url`` fit for provenance and reports.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET = 4
"""Shorter values are not registered (they would mask every digit of every message); the
credential patterns below still mask them in headers."""
_CREDENTIAL = re.compile(
    r"(?i)\b(bearer|basic|token)(\s+)[^\s\"'<>,;&]+"
    r"|\b((?:x-)?api[-_]?key|access[-_]?token|password|secret|authorization)"
    r"(\"?'?\s*[:=]\s*\"?'?)(?:(?:bearer|basic)\s+)?[^\s\"'<>,;&]+"
)
_secrets: set[str] = set()
_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-quoted form) wherever it appears from now on."""
    if not value or len(value) < MIN_SECRET:
        return
    with _lock:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-looking value replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # a longer one may contain a shorter
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _CREDENTIAL.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return f"{match.group(1)}{match.group(2)}{MASK}"
    return f"{match.group(3)}{match.group(4)}{MASK}"


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is a credential: the user, the password, their Basic-auth header value,
    every query value."""
    parts = urlsplit(url)
    raw = [part.partition("=")[2] for part in parts.query.split("&") if part]
    found = raw + [unquote_plus(v) for v in raw]
    if parts.username is not None or parts.password is not None:
        user, password = parts.username or "", parts.password or ""
        found += [user, password, unquote(user), unquote(password)]
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        found.append(base64.b64encode(pair).decode())
    return [v for v in found if v]


def public_url(url: str) -> str:
    """``url`` without its user, password, query and fragment: what provenance may record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedactingFilter(logging.Filter):
    """Redacts a log record's message (with its arguments) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def protect_logger(name: str) -> None:
    """Put a :class:`RedactingFilter` on logger ``name`` (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
