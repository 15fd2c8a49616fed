"""One syncd per watched folder: a claim on each folder, which the kernel drops with its holder.

Two daemons with different state directories watching the same inbox each
upload every file (about twice the traffic, two archives racing for each
file, each ledger wrong about where files went), and nothing said so: the
state directory's lock (syncd/lock.py) covers one state directory only. So
each daemon, ``syncd once`` included, binds an abstract Unix socket named after
each watched folder's device and inode (``@syncd-folder-DEV-INO``): the name
is the host's (its network namespace's), shared by every config and state
directory, and freed when the process ends, SIGKILL included. Nothing is
written into the folder and nothing is held open on it (an open descriptor
of the folder would keep its share from being unmounted). A folder another
syncd holds stops the start (exit 3, like the state lock) or refuses the
reload that adds it; one that appears later is unusable while held (the
files wait). Two hosts sharing an inbox over the network are not seen.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable

HELD = (
    "another syncd already watches this folder (two would upload every file twice): stop "
    "it, or keep its folders out of this config"
)


class FolderClaims:
    """The claims this process holds, by folder root."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[socket.socket, tuple[int, int]]] = {}  # root -> (claim, (dev, ino))

    def problem(self, root: str) -> str | None:
        """None while this process holds ``root`` (claimed now if need be, and again if the
        folder was replaced or remounted); :data:`HELD` while another syncd does. A folder
        that is not there is not a claim's to refuse."""
        try:
            st = os.stat(root)
        except OSError:
            return None
        held = self._held.get(root)
        if held is not None and held[1] == (st.st_dev, st.st_ino):
            return None
        self.release([root])
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(b"\0syncd-folder-%x-%x" % (st.st_dev, st.st_ino))
        except OSError as exc:
            claim.close()
            return HELD if exc.errno == errno.EADDRINUSE else None
        self._held[root] = (claim, (st.st_dev, st.st_ino))
        return None

    def take(self, roots: Iterable[str]) -> dict[str, str]:
        """Claim every folder of ``roots`` that exists; the ones another syncd holds, with why."""
        return {root: why for root in roots if (why := self.problem(root)) is not None}

    def release(self, roots: Iterable[str] | None = None) -> None:
        """Give up the claims on ``roots`` (all when None): folders no longer watched."""
        for root in list(self._held) if roots is None else list(roots):
            held = self._held.pop(root, None)
            if held is not None:
                held[0].close()
