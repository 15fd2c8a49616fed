"""Single-instance lock on a state directory (``flock`` on ``syncd.lock``).

The lock is taken on a separate file, never on the ledger itself: closing any
descriptor of an SQLite file drops the POSIX locks SQLite holds on it. The
holder's PID is written into the file so the refusal can say who holds it.
The kernel releases the lock when the process dies, SIGKILL included, so a
stale lock cannot outlive its holder.

The state directory is created 0700 and the lock file 0600 whatever the
umask (:func:`make_state_dir`): with the ledger they tell who runs and what
was uploaded, and nobody else needs to reach them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from syncd.errors import ConfigError, LedgerUnreachable, LockedError, Problem

LOCK_NAME = "syncd.lock"


class StateLock:
    """Hold with ``with StateLock(state_dir):``; raises LockedError when taken."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            make_state_dir(self.path.parent)
            # root does not follow a symlink the daemon's user (state_dir's owner) put there
            nofollow = os.O_NOFOLLOW if os.geteuid() == 0 else 0
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | nofollow, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):  # cannot be made there
                why = exc.strerror if exc.errno == errno.ENOENT else "not a directory"
                where = exc.filename or self.path.parent
                raise ConfigError(
                    [Problem("daemon.state_dir", f"cannot make {self.path.parent}: {where}: {why}")]
                ) from None
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ELOOP):
                raise
            raise LedgerUnreachable(
                f"cannot take the lock {self.path}: {exc.strerror}"
                + (" (a symlink: not followed as root)" if exc.errno == errno.ELOOP else "")
                + (" (the file system is mounted read-only)" if exc.errno == errno.EROFS else "")
                + "; the ledger itself is fine (do not rebuild it)"
            ) from None
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) != 0o600:
                with contextlib.suppress(OSError):  # not ours: leave it
                    os.fchmod(fd, 0o600)
            if os.geteuid() == 0:  # root (a rebuild, a run by hand): the daemon's user must open it
                owner = os.stat(self.path.parent)
                # a file of its own only: a hard link to another file of root's is not given away
                mine = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                if mine and (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                    with contextlib.suppress(OSError):
                        os.fchown(fd, owner.st_uid, owner.st_gid)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"another syncd (pid {holder}) is already running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def make_state_dir(path: Path) -> None:
    """Create the state directory ``path`` with mode 0700 (whatever the umask) unless it
    exists; missing parents get the usual mode. An existing directory is left alone."""
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return  # made meanwhile by another process, or a file (the caller's open says so)
    os.chmod(path, 0o700)  # the umask takes bits away only; be exact anyway


def holder_pid(state_dir: Path) -> int | None:
    """The PID of the running daemon on ``state_dir``, or None if no one holds the lock."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
