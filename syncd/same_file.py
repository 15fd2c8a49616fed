"""A second name of one file waits until the upload under the first name is over.

Two rows of one folder can stand for the same bytes: hard links, or a file
renamed while its first name is queued or being sent. The settle stage keeps
the later name settling while the earlier one's upload is in flight
(:func:`same_file_waits`), so the file is not sent twice at once.

:class:`InodeWaits` remembers which settling rows wait, so that the end of
the upload they wait for makes them due at once, rather than at the settle
stage's next look a second later: 20 hard links of one file were sent at
one a second.
"""

from __future__ import annotations

from collections import deque

from syncd import safefs
from syncd.ledger import Row, State

LIMIT = 10_000  # files (folder, inode) remembered; past it, what is remembered starts over


class InodeWaits:
    """Settling rows that wait for another name of their file, by (folder, inode).

    :meth:`note` and :meth:`due` are called by the settle stage (the main loop);
    :meth:`over` by the workers, after each file they handled."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._waiting: dict[tuple[str, int], set[int]] = {}
        self._over: deque[tuple[str, int]] = deque()  # appended by workers, drained by :meth:`due`

    def note(self, folder: str, inode: int, row_id: int) -> None:
        """Row ``row_id`` waits for the upload of inode ``inode`` of ``folder`` under another name."""
        key = (folder, inode)
        if key not in self._waiting and len(self._waiting) >= self._limit:
            # files whose last name went another way than through a worker (the archiver's
            # sweep, a forget) stay here: forget them all; the rows that waited are still
            # looked at every WAIT_LOOK, as every waiting row is
            self._waiting.clear()
        self._waiting.setdefault(key, set()).add(row_id)

    def over(self, folder: str, inode: int | None) -> bool:
        """A worker is done with a row of this file (uploaded, retrying, failed...): whether
        a row waits for it (the caller then wakes the main loop)."""
        if inode is None or not self._waiting:  # (read unlocked: a wake missed is a look a second later)
            return False
        self._over.append((folder, inode))
        return True

    def due(self) -> list[int]:
        """The waiting rows whose file a worker was done with since the last call: look at
        them now (one still behind another name is noted again)."""
        ids: list[int] = []
        while self._over:
            ids.extend(self._waiting.pop(self._over.popleft(), ()))
        return ids


def same_file_waits(busy: list[Row]) -> bool:
    """Whether one of ``busy``, the rows of the same inode that are queued or further
    along, still stands for the file being judged."""
    return any(stands_for_its_file(row) for row in busy)


def stands_for_its_file(busy: Row) -> bool:
    """A row waiting to be claimed whose name no longer leads to its inode does not:
    deleted (its inode reused by the new file) or renamed (it finds nothing at its claim
    and vanishes), so the new file need not wait behind the queue or a retry backoff for
    it. One in flight does: its upload follows its file's rename."""
    if busy.state not in (State.QUEUED, State.RETRYING) or busy.location is not None:
        return True  # in flight: an upload follows its file's rename (syncd/upload_source.py)
    try:
        st = safefs.lstat(busy.folder, busy.relpath)
    except OSError as exc:  # UnsafePath too; out of descriptors is no answer (looked at again)
        if exc.errno in safefs.SHORT:
            raise
        return False
    return st.st_ino == busy.inode and (busy.device is None or st.st_dev == busy.device)
