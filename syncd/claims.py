"""One syncd per watched folder: a claim (``flock``) on each folder's directory.

Two daemons with different state directories watching the same inbox each
upload every file (about twice the traffic, two archives racing for each
file, each ledger wrong about where files went), and nothing said so: the
state directory's lock (syncd/lock.py) covers one state directory only. So
each daemon, ``syncd once`` included, holds an exclusive ``flock`` on an open
descriptor of every watched folder it uses; the kernel drops it when the
process ends, SIGKILL included, so a claim never outlives its holder. A
folder another syncd holds stops the start (exit 3, like the state lock) or
refuses the reload that adds it; one that appears later is unusable while
held (the files wait). Nothing is written into the folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable

HELD = (
    "another syncd already watches this folder (two would upload every file twice): stop "
    "it, or keep its folders out of this config"
)


class FolderClaims:
    """The claims this process holds, by folder root."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, tuple[int, int]]] = {}  # root -> (fd, (dev, ino))

    def problem(self, root: str) -> str | None:
        """None while this process holds ``root`` (claimed now if need be, and again if the
        folder was replaced or remounted); :data:`HELD` while another syncd does. A folder
        that is not there, or a file system without ``flock``, is not a claim's to refuse."""
        try:
            st = os.stat(root)
        except OSError:
            return None
        held = self._held.get(root)
        if held is not None and held[1] == (st.st_dev, st.st_ino):
            return None
        self.release([root])
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None  # not listable: the folder's own checks say so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            return HELD if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        self._held[root] = (fd, (st.st_dev, st.st_ino))
        return None

    def take(self, roots: Iterable[str]) -> dict[str, str]:
        """Claim every folder of ``roots`` that exists; the ones another syncd holds, with why."""
        return {root: why for root in roots if (why := self.problem(root)) is not None}

    def release(self, roots: Iterable[str] | None = None) -> None:
        """Give up the claims on ``roots`` (all when None): folders no longer watched."""
        for root in list(self._held) if roots is None else list(roots):
            held = self._held.pop(root, None)
            if held is not None:
                os.close(held[0])
