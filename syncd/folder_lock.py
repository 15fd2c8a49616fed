"""One syncd per watched folder.

The state lock (syncd/lock.py) keeps a second daemon off a ``state_dir``, not
off a folder: two daemons with state directories of their own (a second
unit, a copy of the config, ``syncd once`` from cron beside the service) would
both upload every file dropped into a folder they share, and then fight over
moving it (``now holds another file``). So whoever watches a folder holds a
lock on it while it does; the other reports the folder as unavailable
(``already watched by another syncd (pid 1234)``), neither scans nor reads it, and
takes it over within a few seconds once the holder lets go (it stops, or its
config drops the folder). Two folders of one config that are one directory
(a bind mount: the configuration check compares paths) are one folder too:
the second is reported, not uploaded from twice.

The lock is a listening Unix socket in the abstract namespace named after the
folder's device and inode, not an ``flock`` on the folder: a descriptor of
the folder would keep its file system from being unmounted (F10), and the
name follows the folder whatever path (a bind mount, a symlink) reaches it.
The kernel frees the name when its holder dies, SIGKILL included. Anyone
may bind such a name, so a holder counts only when it runs as syncd's own
user or as root (``SO_PEERCRED``): another user cannot keep syncd off its
folders. A syncd run as root (``syncd once`` by hand beside the service)
honours a holder of any user, the service's included. Two syncd of
different users neither of them root, or in different network namespaces,
are not kept apart.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

HELD = "already watched by"  # how a folder problem caused by the lock begins
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _name(st: os.stat_result) -> bytes:
    return b"\0syncd-folder:%x:%x" % (st.st_dev, st.st_ino)


def take(st: os.stat_result, known: str | None = None) -> tuple[socket.socket | None, str | None]:
    """``(lock, problem)`` for the folder ``st`` describes: the lock, or the problem when
    another syncd holds it; ``(None, None)`` when no lock can be had here and none holds
    the folder either. ``known``: the folder's problem so far (who holds it is asked once,
    not at every look)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError as exc:  # syncd out of descriptors: the folder waits for one, said as its problem
        return None, f"cannot take its lock ({exc.strerror or exc})"
    try:
        sock.bind(_name(st))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            return None, None
        if known is not None and known.startswith(HELD):
            return None, known
        holder = holder_pid(st)
        if holder is None:
            return None, None  # not a syncd of ours (another user's name, not listening)
        if holder == os.getpid():  # two folders of one config, one directory (a bind mount)
            return None, f"{HELD} this syncd as another of its folders (the same directory: a bind mount?)"
        return None, f"{HELD} another syncd (pid {holder})"
    return sock, None


def holder_pid(st: os.stat_result) -> int | None:
    """The pid of the process of this user (or root; any user's, when this process is
    root) that holds the lock of the folder ``st`` describes, else None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(_name(st))
            pid, uid, _ = _CRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        except OSError:
            return None
    # (this process's own too); root (`syncd once` by hand) honours the service's user too
    trusted = os.geteuid() == 0 or uid in (os.geteuid(), 0)
    return pid if trusted and pid > 0 else None


def drain(lock: socket.socket | None) -> None:
    """Close the connections others made to ask who holds ``lock`` (a full queue would
    keep the next from asking)."""
    if lock is None:
        return
    for _ in range(64):
        try:
            conn, _ = lock.accept()
        except OSError:
            return
        conn.close()


def release(lock: socket.socket | None) -> None:
    if lock is not None:
        lock.close()


class Locks:
    """The folders' locks of a process without a watcher (``syncd once``): taken at the
    first look at a usable folder, held until :meth:`close`."""

    def __init__(self) -> None:
        self._held: dict[str, socket.socket | None] = {}
        self._others: dict[str, str] = {}  # the folders another syncd holds, with the problem

    def check(self, root: str, st: os.stat_result) -> str | None:
        """None when this process holds ``root`` (or no lock can be had there), else why not."""
        if root in self._held:
            return None
        lock, problem = take(st, self._others.get(root))
        if problem is None:
            self._held[root] = lock
            self._others.pop(root, None)
        else:
            self._others[root] = problem
        return problem

    def close(self) -> None:
        for lock in self._held.values():
            release(lock)
        self._held.clear()


__all__ = ["HELD", "Locks", "drain", "holder_pid", "release", "take"]
