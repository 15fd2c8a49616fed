"""The hand-over of an uploaded file: its record, its after_upload action and what a failure says.

:meth:`HandOver.record` commits the upload the service confirmed, waiting
while the ledger takes no writes. :meth:`HandOver.hand_over` is the one place an uploaded row is archived,
deleted or kept (:func:`syncd.archive.finish` does the file-system part):
right after its upload (syncd/upload_one.py), and for rows a crash, a full
disk or a stuck archive left ``uploaded`` (syncd/recovery.py). A failure
leaves the row ``uploaded`` for the sweep and is said once where it would
repeat: a full disk (syncd/backpressure.py), an archive folder that takes no
writes is a stuck folder (:class:`syncd.stuck.Stuck`), a folder that is away
waits for its return (syncd/away.py), a file a process still has open for
writing waits until it is closed (:class:`syncd.moves.StillOpen`), syncd out of
descriptors or threads is said once for everything (syncd/limits.py). Once
uploads are being cancelled (syncd stops) the file is left for the next start.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from syncd import archive, failed, limits
from syncd.backpressure import DiskFull
from syncd.failure_kinds import is_disk_full, is_locked
from syncd.ledger import Ledger, Row
from syncd.liveness import Pulse, local_allowance
from syncd.logs import quoted_path
from syncd.moves import StillOpen
from syncd.stuck import Stuck

if TYPE_CHECKING:
    from syncd.config import FolderConfig
    from syncd.retry_policy import RetryPolicy

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name
OPEN_SAID_MAX = 10_000  # rows said (at warning level) to be held open; the rest at debug level
RECORD_WAIT = 5.0  # seconds between tries to record an upload the ledger did not take


class HandOver:
    """after_upload for ``uploaded`` rows, with the stuck folders it found."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        policy: RetryPolicy,
        disk_full: DiskFull,
        cancel: threading.Event,
        clock: Callable[[], float],
        metrics: Any = None,
    ) -> None:
        self.ledger = ledger
        self.policy = policy
        self.disk_full = disk_full
        self.cancel = cancel
        self.clock = clock
        self.metrics = metrics
        self.stuck = Stuck()  # folders whose after-upload action keeps failing
        self._open: dict[int, str] = {}  # rows held open for writing by a process -> folder
        self._lock = threading.Lock()

    def record(self, row: Row, pulse: Pulse, **fields: Any) -> None:
        """``mark_uploaded``, tried again every RECORD_WAIT seconds while the ledger takes
        no writes (its write lock held by another process past the busy timeout, its disk
        full) until it does or syncd stops: the service holds the file now, and a row left
        ``uploading`` is requeued by the sweep and sent again. Other ledger errors, and a
        stop, leave the row to the sweep or the next start, as before."""
        said = False
        while True:
            pulse.phase("recording the upload", local_allowance(row.size or 0))
            try:
                self.ledger.mark_uploaded(row.id, **fields)
            except sqlite3.OperationalError as exc:
                full = is_disk_full(exc)
                if self.cancel.is_set() or not (full or is_locked(exc)):
                    raise
                if full:
                    self.disk_full.note("ledger", exc)
                if not said:
                    log.warning(
                        "uploaded %s, but the ledger cannot record it (%s%s); trying again every"
                        " %g s (it is not sent again)",
                        quoted_path(row.inbox_path),
                        exc,
                        "" if full else self.ledger.held_by(),
                        RECORD_WAIT,
                    )
                    said = True
                self.cancel.wait(RECORD_WAIT)
                continue
            if said:
                log.info("recorded the upload of %s", quoted_path(row.inbox_path))
            return

    def hand_over(
        self, row: Row, folder: FolderConfig, fd: int | None = None, *, fresh: bool = False
    ) -> OSError | None:
        """archive / delete / keep an ``uploaded`` row; the error when that failed (the
        row stays ``uploaded``), else None. ``fd``: the descriptor the upload read, so
        the archive gets those bytes; ``fresh``: marked uploaded just now
        (:func:`syncd.archive.finish`)."""
        if self.cancel.is_set():
            return OSError(errno.ECANCELED, "syncd is stopping")
        try:
            archive.finish(
                self.ledger, row, folder, fd, fresh=fresh, away=self.policy.folder_problem, cancel=self.cancel
            )
        except StillOpen as exc:  # the file's own reason: no folder problem
            with self._lock:
                first = row.id not in self._open and len(self._open) < OPEN_SAID_MAX
                self._open[row.id] = row.folder  # every one counted (`once` leaves them all)
            (log.warning if first else log.debug)(
                "uploaded %s, but a process still has it open for writing: it is %s once it is "
                "closed (new bytes written meanwhile are a new version, uploaded on their own)",
                quoted_path(row.current_path),
                "archived" if folder.after_upload == "archive" else "deleted",
            )
            return exc
        except archive.FolderAway as exc:
            first = self.policy.away.note(row.folder)
            (log.warning if first else log.debug)(
                "uploaded %s, but %s; it is archived once the folder is back",
                quoted_path(row.current_path),
                exc,
            )
            return exc
        except OSError as exc:
            if exc.errno == errno.ECANCELED and self.cancel.is_set():
                log.info(
                    "stopping: the archive move of %s is done at the next start",
                    quoted_path(row.current_path),
                )
                return exc
            if (kind := limits.shortage(exc)) is not None:  # syncd's own limits, not the folder's
                self.policy.shortages.note(kind, exc)
                log.debug("%s of %s waits: %s", folder.after_upload, quoted_path(row.current_path), kind)
                return exc
            full = is_disk_full(exc)
            if full:
                said = "archive" in self.disk_full
                self.disk_full.note("archive", exc, folder.archive_dir)
            else:
                said = not self.stuck.failed(row.folder, row.id, exc)
            log.log(
                logging.DEBUG if said else logging.ERROR,
                "uploaded but could not %s %s: %s; will try again%s",
                folder.after_upload,
                quoted_path(row.current_path),
                exc.strerror or exc,
                "" if full else " (files of this folder stay in the inbox, uploaded, until it works)",
            )
            return exc
        with self._lock:
            self._open.pop(row.id, None)
        failed.forget_reason(row, folder)  # a retried file sent from failed_dir: its reason goes
        if self.stuck.worked(row.folder, row.id):
            log.info("%s works again in %s", folder.after_upload, quoted_path(row.folder))
        if self.metrics is not None:
            self.metrics.observe_done(row.first_seen, self.clock())
        return None

    def open_by_folder(self) -> dict[str, int]:
        """Uploaded files whose after_upload waits for a process to close them, per folder."""
        with self._lock:
            return dict(Counter(self._open.values()))
