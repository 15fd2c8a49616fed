"""Whether any process holds a file open for writing, asked of the kernel.

Quiet time alone cannot tell a finished file from one whose writer paused: a
copy over a slow link, a scanner between pages, a producer that writes a
header, computes for a minute, then writes the rest. Linux knows, though:
a *read lease* (``fcntl(F_SETLEASE, F_RDLCK)``) is refused with ``EAGAIN``
while any process has the file open for writing. :func:`held_for_writing`
takes one on a read-only descriptor and gives it back at once, so the
settle stage waits for the writer to close the file, however long it pauses.

The answer is None (cannot tell: quiet time decides, as before) where the
kernel will not lease: a file of another user without ``CAP_LEASE`` (the
shipped unit grants it), a file system without leases (NFS, FUSE, some
overlays), ``fs.leases-enable = 0``, or before :func:`enable` ran.

A writer that opens the file in the microseconds the lease is held breaks
it: its ``open`` waits until the lease is given back (an ``O_NONBLOCK`` open
fails with ``EWOULDBLOCK`` instead), and the kernel sends the holder
``SIGIO``, whose default action ends the process. :func:`enable` therefore
sets ``SIGIO`` to be ignored first; it runs on the main thread with the other
signal handlers (syncd uses ``SIGIO`` for nothing else).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import signal
import threading

log = logging.getLogger(__name__)

_enabled = False
_said: set[int] = set()  # errnos already logged as "cannot tell"
_lock = threading.Lock()


def enable() -> None:
    """Ignore ``SIGIO`` (a broken lease's signal) and let :func:`held_for_writing` ask."""
    global _enabled
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    _enabled = True


def held_for_writing(fd: int) -> bool | None:
    """True when some process has the file of ``fd`` (opened read-only) open for
    writing, False when none has, None when the kernel will not say."""
    if not _enabled:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        with _lock:
            first = exc.errno not in _said
            _said.add(exc.errno or 0)
        if first:
            log.info(
                "cannot ask the kernel whether a file is still open for writing (%s): "
                "quiet time alone decides when such files are finished",
                _why(exc.errno),
            )
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:  # closing the descriptor gives the lease back too
        pass
    return False


def _why(code: int | None) -> str:
    if code in (errno.EACCES, errno.EPERM):
        return "a file of another user, and syncd lacks CAP_LEASE"
    if code == errno.EINVAL:
        return "the file system has no leases, or fs.leases-enable is 0"
    return errno.errorcode.get(code or 0, str(code))
