"""The retry policy: what kind of failure an error is, and how long to wait before the next try.

Pure functions, no state: the uploader and the destination circuit
(:mod:`syncd.circuit`) decide *whether* a file waits; these say *what* a
failure was (for the ``class`` label of ``syncd_retries_total``), whether it
is a full disk (which pauses every worker rather than one file), and how long
a file waits before its next attempt.
"""

from __future__ import annotations

import errno
import random
import sqlite3

from syncd.errors import ExpiredError, RetryableError


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


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


def backoff(attempt: int, base: float, cap: float, rng: random.Random,
            retry_after: float | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's hint, else full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return max(0.05, rng.uniform(0, ceiling))
