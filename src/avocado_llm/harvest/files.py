"""Writing into a run directory: whole files by rename, appends and locks that never follow a
symbolic link.

A link planted in a run directory (``student/README.md`` → ``~/.bashrc``) must not send our
bytes to another file. Whole files are written to a new temporary file and renamed over the
name, which replaces a link instead of writing through it; appends and lock files are opened
with ``O_NOFOLLOW``, so a link there is refused with a message that names it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class RunDirError(RuntimeError):
    """A file in a run directory cannot be used safely; the message says which and why."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: temporary file beside it, fsync, rename, fsync dir.

    A symbolic link at ``path`` is replaced by the new file, never written through."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}); Avocado does not write "
                "through links in a run directory: remove it and rerun"
            ) from None
        raise


def append_bytes(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Append ``data`` to ``path`` (created if missing); refuses a symbolic link."""
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def acquire_lock(path: Path, busy: str) -> int:
    """Hold an exclusive lock on ``path`` (created if missing, never truncated, never a link)
    until :func:`release_lock`; ``busy`` is the error message when another process holds it."""
    fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(busy) from None
    return fd


def release_lock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the lock


def clear_entry(path: Path) -> None:
    """Remove whatever is at ``path`` (a link, a file or a directory tree); a link's target is
    left alone."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
