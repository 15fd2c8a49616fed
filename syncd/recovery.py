"""Startup recovery, and the sweep that repeats it while syncd runs.

At startup, before any worker or scan runs (design invariant 5: a crash
anywhere is recoverable):

* moves to a failed folder that a stop interrupted are finished
  (:func:`syncd.failed.finish_interrupted_failures`);
* rows left ``uploading`` go back to ``queued``, keeping their resume state
  (the parts already confirmed);
* half-written ``.syncd-tmp-*`` copies in archive and failed folders are
  removed;
* rows ``uploaded`` (skipped duplicates included) have their after-upload
  action finished, using the archive target recorded before the move, so a
  crash between link and unlink, or between a cross-device copy and the
  unlink, ends with exactly one copy and no second upload. This goes
  through the same hand-over as a fresh upload
  (:meth:`syncd.hand_over.HandOver.hand_over`).

Due times that lie further ahead than syncd ever schedules (the system
clock was stepped back, while syncd ran or while it was down) are brought
back into reach (:meth:`syncd.ledger.schedule.Schedule.rein_in`), at startup
and at every sweep.

Then every folder is scanned (the daemon asks for it) for files dropped
while syncd was down.

Every ``SWEEP_EVERY`` seconds the main loop repeats the last step and the
due-time check, and requeues rows left ``uploading`` that no worker holds, for rows that a ledger
write that failed (a full disk) or an archive folder that was not writable
left behind (:meth:`Recovery.sweep`).

Finishing ``uploaded`` rows runs on a thread of its own, the *archiver*
(:meth:`Recovery.start`), never on the main loop: one archive move across
file systems copies the whole file, and a 20 GB file copied at 200 MB/s is
100 s without a tick. On the main loop that was no watchdog ping for longer
than ``WatchdogSec=``: systemd killed syncd mid-copy, and the next start began
the same copy again, a restart loop that never archived the file. The
archiver keeps a liveness pulse like an upload worker's (a copy's allowance
is its size at 10 MB/s); the main loop and the sweep only ask it to run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from syncd import copies, failed
from syncd.circuit import REFUSE_PAUSE
from syncd.failure_kinds import is_disk_full
from syncd.file_waits import FOLDER_WAIT, UNCONFIGURED_WAIT
from syncd.http import RETRY_AFTER_CAP
from syncd.ledger import Ledger, Row, State
from syncd.liveness import Liveness, Pulse, local_allowance
from syncd.logs import quoted_path
from syncd.settle import LONGEST_LOOK
from syncd.uploader import Uploader

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

SWEEP_EVERY = 10.0
PAGE = 500  # uploaded rows read at a time by the sweep
BUDGET = 1.0  # seconds of archiving per pass; the archiver starts another at once (more)


class Recovery:
    def __init__(self, ledger: Ledger, folders: Callable[[], Mapping[str, Any]], uploader: Uploader) -> None:
        self.ledger = ledger
        self._folders = folders
        self.uploader = uploader
        self._stuck_after: dict[str, int] = {}  # stuck folder -> the uploaded row tried last
        self.more = False  # finish_uploaded stopped at its budget: call it again at once
        self.full = False  # the archiver's last pass found a disk full
        self._wanted = threading.Event()  # the archiver is asked for a pass
        self._asked = 0  # passes asked for so far (request())
        self._answered = 0  # the asks the last finished pass answered (it began after them)
        self._probe_ask: int | None = None  # the ask of the last disk-full probe
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._liveness: Liveness | None = None
        self._pulse: Pulse | None = None
        self._on_pass: Callable[[], None] = lambda: None

    def at_start(self) -> None:
        """Reconcile ledger, inbox and archive after the last stop (see the module docstring)."""
        folders = self._folders()
        moved = failed.finish_interrupted_failures(self.ledger, folders)
        if moved:
            log.info("finished %d move(s) to a failed folder interrupted by the last stop", moved)
        requeued = self.ledger.requeue_stale()
        if requeued:
            log.info("resuming %d upload(s) interrupted by the last stop", requeued)
        self.rein_in()
        for root in folders:  # files put off while a folder was away before the stop
            self.ledger.folder_back(root)
        for folder in folders.values():
            for directory in (folder.archive_dir, folder.failed_dir):
                if directory is not None and os.path.isdir(directory):
                    removed = copies.clean_temp(os.fspath(directory))
                    if removed:
                        log.info(
                            "removed %d partial copies in %s", removed, quoted_path(os.fspath(directory))
                        )
        self.archive_pass()  # rows left uploaded

    # the archiver --------------------------------------------------------------

    def start(self, liveness: Liveness, on_pass: Callable[[], None] = lambda: None) -> None:
        """Start the archiver thread; ``on_pass`` is called after each pass (a nudge)."""
        self._pulse = liveness.pulse("archiver", "worker")
        self._liveness = liveness
        self._on_pass = on_pass
        self._thread = threading.Thread(target=self._run, name="archiver", daemon=True)
        self._thread.start()

    def request(self) -> int:
        """Ask the archiver for a pass over the ``uploaded`` rows no worker holds; returns
        the number of this ask."""
        with self._lock:
            self._asked += 1
            asked = self._asked
        self._wanted.set()
        return asked

    def archive_pass(self) -> None:
        """A pass over the ``uploaded`` rows: by the archiver when it runs, else here."""
        if self._thread is None:
            self.finish_uploaded()
        else:
            self.request()

    def archive_full(self) -> bool:
        """For the disk-full probe: whether a disk is still full, by the archiver's last
        pass if it began after the previous probe asked (True until one has: a worker's
        archive move that hit ENOSPC since is not to be outdone by an older pass); asks
        for another pass."""
        if self._thread is None:
            return self.finish_uploaded()
        with self._lock:
            fresh = self._probe_ask is not None and self._answered >= self._probe_ask
            full = self.full if fresh else True
        self._probe_ask = self.request()
        return full

    def stop(self, timeout: float) -> bool:
        """Let the pass in progress end (up to ``timeout``); True when the archiver is done."""
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        assert self._pulse is not None and self._liveness is not None
        while True:
            self._pulse.idle()
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                self._liveness.release(self._pulse)
                return
            self._pulse.step("looking for uploaded files to archive")
            with self._lock:
                asked = self._asked
            try:
                full = self.finish_uploaded(self._pulse)
            except Exception as exc:  # a ledger error, a bug: the next sweep asks again
                if self._stopping:  # a copy that outlived the stop: its ledger is closed
                    log.info(
                        "an archive move was cut short by the stop (%s); the next start finishes it", exc
                    )
                else:
                    log.exception("could not finish the after_upload action of uploaded files")
            else:
                with self._lock:
                    self.full, self._answered = full, asked
            if self.more:
                self._wanted.set()
            self._on_pass()

    def finish_uploaded(self, pulse: Pulse | None = None) -> bool:
        """Finish after_upload for rows left ``uploaded`` that no worker holds; True if a
        disk was full.

        Folder by folder, a page of rows at a time (10,000 uploaded files of a folder whose
        archive takes no writes made every sweep read them all: 5 s and 120 MB for
        100,000). A stuck folder (:class:`syncd.stuck.Stuck`) gets one try a sweep; the
        rest of its files follow in the same sweep once that one worked.
        """
        procedure = self.uploader.procedure
        full = False
        deadline, first = time.monotonic() + BUDGET, True  # one row at least, whatever the clock
        self.more = False
        for root, folder in self._folders().items():
            if procedure.policy.folder_problem(root) is not None:
                continue  # away (unmounted): its files are not gone, and wait for it
            # a stuck folder, or one whose archive is full: one file a pass, as a probe
            stuck = root in procedure.after.stuck or procedure.after.disk_full.archive_full(folder)
            start = self._stuck_after.get(root, 0) if stuck else 0
            after, limit, wrapped, worked = start, (1 if stuck else PAGE), False, False
            while True:
                page = self.ledger.rows(state=State.UPLOADED, folder=root, after=after, limit=limit)
                if wrapped:
                    page = [listed for listed in page if listed.id <= start]
                elif not page and start and worked:
                    # the probe worked and those after it went: now those listed before it
                    after, limit, wrapped = 0, PAGE, True
                    continue
                if not page:
                    self._stuck_after.pop(root, None)  # past the last one: from the first again
                    break
                for listed in page:
                    if (time.monotonic() > deadline and not first) or self._stopping:
                        # a stop, or the pass's budget spent (25,000 files of an archive that
                        # works again take minutes): the archiver starts another pass at once
                        self.more = True
                        return full
                    row = self._take_uploaded(listed.id)
                    if row is None:
                        continue  # a worker holds it, or it is done by now
                    first = False
                    if pulse is not None:
                        pulse.phase(f"archiving {row.inbox_path}", extra=local_allowance(row.size))
                    try:
                        error = procedure.after.hand_over(row, folder)
                    finally:
                        self._release(row.id)
                    full = full or (error is not None and is_disk_full(error))
                    worked = worked or error is None
                    if error is not None and (stuck or root in procedure.after.stuck):
                        # The others wait for the next sweep, which tries the one after
                        # this (a file that fails for a reason of its own holds none back).
                        self._stuck_after[root] = row.id
                        break
                else:
                    # the page went through: a stuck folder's probe that worked means the
                    # folder works again, and its other files go in this pass (a failure
                    # still ends it: a full archive may take a link and not a copy)
                    after, limit = page[-1].id, PAGE
                    continue
                break
        return full

    def _take_uploaded(self, row_id: int) -> Row | None:
        """The row ``row_id`` as it is now, registered in flight for the sweep, if it is
        ``uploaded`` and no worker holds it (one that claimed it after the sweep began
        included); else None. :meth:`_release` after."""
        stats = self.uploader.stats
        with stats.lock:
            if row_id in stats.inflight:
                return None
            row = self.ledger.get(row_id)
            if row is None or row.state != State.UPLOADED:
                return None
            stats.inflight[row_id] = row.inbox_path
            return row

    def _release(self, row_id: int) -> None:
        with self.uploader.stats.lock:
            self.uploader.stats.inflight.pop(row_id, None)

    def requeue_orphans(self) -> int:
        """Rows left ``uploading`` that no worker holds (a failed ledger write): requeue.

        A row is claimed and registered in flight in one step under the same lock, so no
        row a worker has just claimed is taken. One with a failed_dir target recorded was
        being failed: its move is finished (as at start), since its file may be in
        failed_dir already, where a requeued row would find nothing ("vanished")."""
        stats = self.uploader.stats
        with stats.lock:
            orphans = [r for r in self.ledger.in_state(State.UPLOADING) if r.id not in stats.inflight]
            failing = []
            for row in orphans:
                if row.archive_path is not None and row.location is None:
                    failing.append(row)
                    stats.inflight[row.id] = row.inbox_path  # ours while we finish it
                else:
                    self.ledger.requeue_now(row.id, reason="interrupted")
        for row in failing:
            try:
                folder = self._folders().get(row.folder)
                if folder is not None:
                    # the .error.json the move wrote has this failure's reason; last_error
                    # may still hold an earlier attempt's
                    reason = failed.recorded_reason(row, folder) or row.last_error or "failed (see the log)"
                    failed.to_failed(self.ledger, row, folder, reason)
            except (OSError, sqlite3.Error) as exc:
                log.error("could not finish failing %s: %s", quoted_path(row.inbox_path), exc)
            finally:
                self._release(row.id)
        return len(orphans)

    def sweep(self) -> None:
        """Repair what a failed ledger write or archive move may have left behind, and due
        times a stepped-back clock left in the future."""
        self.archive_pass()
        self.requeue_orphans()
        self.rein_in()

    def rein_in(self) -> None:
        """No file waits longer than syncd ever schedules, whatever the system clock did."""
        settle = max((float(f.settle_seconds) for f in self._folders().values()), default=0.0)
        # the longest wait syncd schedules: a backoff or a service's hold (capped by
        # retry_max_seconds), a server's Retry-After, a refusing destination's pause,
        # a file waiting for its folder, destination or sidecar
        horizon = max(self.uploader.policy.cap, RETRY_AFTER_CAP, REFUSE_PAUSE, UNCONFIGURED_WAIT, FOLDER_WAIT)
        reined = self.ledger.rein_in(max(horizon, settle), max(settle, LONGEST_LOOK))
        if reined.total:
            log.warning(
                "%d file(s) were due later than syncd ever schedules (%d queued, %d retrying,"
                " %d settling): the system clock was stepped back, or the configuration now"
                " waits less (retry_max_seconds, settle_seconds); they are due again within"
                " the wait they were given",
                reined.total,
                reined.queued,
                reined.retrying,
                reined.settling,
            )
            self.uploader.wake()
