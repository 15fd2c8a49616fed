"""Back-pressure: a full disk pauses what it must, and a real write resumes it.

When the ledger cannot write ("database or disk is full"), no worker claims a
new row (:attr:`DiskFull.paused`) while uploads in flight finish or fail
normally (one the service confirmed keeps its receipt and is recorded once the
ledger takes writes: syncd/upload_one.py); nothing new is begun; files stay where
they are, nothing is lost, and the STATUS line says ``disk full, paused
(ledger)``. A full ledger is reported, never a reason for the watchdog to
restart syncd (that would not free any space).

When an archive move fails with ENOSPC/EDQUOT, only that archive folder is
full: uploads go on (every folder's, that one's too), and the uploaded files
whose archive is full stay in their inbox, recorded ``uploaded``, until it
takes writes again (STATUS: ``archive full (/srv/archive): uploaded files wait
in the inbox``). One folder's full archive disk holds back no other folder.

While anything is full, the main loop calls :meth:`DiskFull.probe` every
couple of seconds: it writes to the ledger and, for a full archive, finishes
the moves that were waiting and writes a small file into each archive folder.
Once those succeed the pause (or the wait) ends; after a full ledger every
folder is rescanned (events may have been dropped while it took no writes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from syncd import copies
from syncd.failure_kinds import is_disk_full
from syncd.ledger import Ledger

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name

PROBE_BYTES = 64 * 1024  # the write that must succeed in each archive folder before resuming


class DiskFull:
    """Where the disk is full (``"ledger"``, ``"archive"``) -> what failed; empty when not.

    ``archives``: the archive folders found full (their uploaded files wait). Only a
    full ledger pauses claiming (:attr:`paused`)."""

    def __init__(self, metrics: Any = None, on_ok: Callable[[], None] = lambda: None) -> None:
        self.where: dict[str, str] = {}
        self.archives: set[str] = set()
        self.metrics = metrics
        self.on_ok = on_ok  # writes succeed again: wake the workers

    def __bool__(self) -> bool:
        return bool(self.where)

    def __contains__(self, where: object) -> bool:
        return where in self.where

    @property
    def paused(self) -> bool:
        """Whether workers take no new uploads: the ledger records nothing."""
        return "ledger" in self.where

    def note(self, where: str, exc: BaseException, directory: Any = None) -> None:
        """``where`` ("ledger", or "archive" with its ``directory``) ran out of space."""
        first = not self.where
        what = getattr(exc, "strerror", None) or str(exc)
        if directory is not None:
            self.archives.add(os.fspath(directory))
        if where not in self.where:
            log.error(
                "disk full (%s: %s): %s",
                where,
                what,
                "paused taking new uploads; files stay where they are and work resumes when space is free"
                if where == "ledger"
                else "uploads go on; the uploaded files stay in their inbox and are archived once "
                "space is free",
            )
        self.where[where] = what
        if first and self.metrics is not None:
            self.metrics.set_disk_full(True)

    def archive_full(self, folder: Any) -> bool:
        """Whether ``folder``'s archive is one found full (its uploaded files wait)."""
        return folder.archive_dir is not None and os.fspath(folder.archive_dir) in self.archives

    def describe(self) -> list[str]:
        """What is full, for the STATUS= line."""
        said = ["disk full, paused (ledger)"] if self.paused else []
        if "archive" in self.where:
            where = ", ".join(sorted(self.archives)) or "archive"
            said.append(f"archive full ({where}: {self.where['archive']}): uploaded files wait in the inbox")
        return said

    def ok(self, where: str | None = None) -> None:
        """Writes succeed again (``where``, or everywhere): resume what was held."""
        for place in [where] if where is not None else sorted(self.where):
            if self.where.pop(place, None) is None:
                continue
            if place == "ledger":
                log.warning("disk space is available again (ledger); resuming uploads")
            else:
                log.warning("disk space is available again (archive); archiving the files that waited")
                self.archives.clear()
        if not self.where:
            if self.metrics is not None:
                self.metrics.set_disk_full(False)
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
        if self.paused:  # the ledger takes writes: uploads resume, whatever an archive says
            self.ok("ledger")
            for root in folders:  # events may have been dropped while the ledger was full
                rescan(root)
        if "archive" in self:
            if finish_uploaded():
                return
            for folder in folders.values():
                if folder.archive_dir is not None and not can_write(folder.archive_dir):
                    return
            self.ok("archive")


def can_write(directory: Any) -> bool:
    """Whether ``directory`` takes a small write (a full-disk probe); False on ENOSPC."""
    try:
        return copies.can_write(os.fspath(directory), PROBE_BYTES)
    except OSError as exc:
        return not is_disk_full(exc)
