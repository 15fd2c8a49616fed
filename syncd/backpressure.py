"""Back-pressure: a full disk pauses taking new uploads, and a real write resumes them.

When the ledger cannot write ("database or disk is full") or an archive move
fails with ENOSPC/EDQUOT, no worker claims a new row (:class:`DiskFull` is
truthy) while uploads in flight finish or fail normally: files stay where
they are, nothing is lost, and the STATUS line says ``disk full, paused
(ledger)`` or ``(archive)``. A full ledger is reported, never a reason for
the watchdog to restart syncd (that would not free any space).

While paused, the main loop calls :meth:`DiskFull.probe` every couple of
seconds: it writes to the ledger and, for a full archive, finishes the moves
that were waiting and writes a small file into each archive folder. Once
those succeed claiming resumes, and every folder is rescanned (events may
have been dropped while the ledger took no writes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from syncd import moves
from syncd.failure_kinds import is_disk_full
from syncd.ledger import Ledger

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name

PROBE_BYTES = 64 * 1024  # the write that must succeed in each archive folder before resuming


class DiskFull:
    """Where the disk is full (``"ledger"``, ``"archive"``) -> what failed; empty when not."""

    def __init__(self, metrics: Any = None, on_ok: Callable[[], None] = lambda: None) -> None:
        self.where: dict[str, str] = {}
        self.metrics = metrics
        self.on_ok = on_ok  # writes succeed again: wake the workers

    def __bool__(self) -> bool:
        return bool(self.where)

    def __contains__(self, where: object) -> bool:
        return where in self.where

    def note(self, where: str, exc: BaseException) -> None:
        """Pause claiming work: ``where`` ("ledger" or "archive") ran out of space."""
        first = not self.where
        what = getattr(exc, "strerror", None) or str(exc)
        if where not in self.where:
            log.error(
                "disk full (%s: %s): paused taking new uploads; files stay where they "
                "are and work resumes when space is free",
                where,
                what,
            )
        self.where[where] = what
        if first and self.metrics is not None:
            self.metrics.disk_full.set(1)

    def ok(self) -> None:
        """Writes succeed again: resume claiming work."""
        if self.where:
            log.warning("disk space is available again (%s); resuming uploads", ", ".join(sorted(self.where)))
            self.where.clear()
            if self.metrics is not None:
                self.metrics.disk_full.set(0)
            self.on_ok()

    def probe(
        self,
        ledger: Ledger,
        folders: Mapping[str, Any],
        finish_uploaded: Callable[[], bool],
        rescan: Callable[[str], None],
    ) -> None:
        """Paused: resume once the ledger and the archive take writes. ``finish_uploaded``
        finishes the archive moves that were waiting (True while a disk is still full);
        ``rescan(root)`` asks for a scan of a folder."""
        try:
            ledger.put_meta("disk_probe", time.time())
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                return
            raise
        if "archive" in self:
            if finish_uploaded():
                return
            for folder in folders.values():
                if folder.archive_dir is not None and not can_write(folder.archive_dir):
                    return
        self.ok()
        for root in folders:  # events may have been dropped while the ledger was full
            rescan(root)


def can_write(directory: Any) -> bool:
    """Whether ``directory`` takes a small write (a full-disk probe); False on ENOSPC."""
    try:
        return moves.can_write(os.fspath(directory), PROBE_BYTES)
    except OSError as exc:
        return not is_disk_full(exc)
