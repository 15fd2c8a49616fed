"""What kind of failure an error is.

:func:`retry_class` gives the ``class`` label of ``syncd_retries_total``;
:func:`is_disk_full` tells a full disk, which pauses every worker
(syncd/backpressure.py) rather than failing one file; :func:`is_locked` a
ledger another process holds. What a failure leads
to is syncd/retry_policy.py.
"""

from __future__ import annotations

import errno
import sqlite3

from syncd.errors import ExpiredError, RetryableError


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY): another process held the ledger's write
    lock past the busy timeout."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_BUSY or "locked" in str(exc) or "busy" in str(exc)


def retry_class(exc: BaseException | None) -> str:
    """What kind of failure a retry is for (the ``class`` label of syncd_retries_total)."""
    if isinstance(exc, ExpiredError):
        return "expired"
    if isinstance(exc, RetryableError):
        status = exc.status
        if status == 429:
            return "rate_limited"
        if status in (408, 425, 504):
            return "timeout"
        if status is not None and status >= 500:
            return "server_error"
        if status is not None:
            return "client_error"
        return "timeout" if "Timeout" in str(exc) else "network"
    if isinstance(exc, OSError):
        return "local_io"
    return "internal"
