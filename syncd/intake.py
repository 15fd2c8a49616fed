"""Intake: from events and scans into the ledger, and when the main loop wakes.

Three sources put paths into the ledger as ``settling`` rows:

* watchdog's observer threads record paths into the :class:`~syncd.events.Intake`
  buffer (and never touch the ledger); each tick :func:`flush` writes them,
  one transaction per :data:`syncd.scanner.BATCH` paths. A busy, locked or
  full ledger loses nothing: what was not written goes back into the buffer
  for the next tick.
* the scanner thread walks folders on request (:meth:`IntakeStage.request_scan`):
  at startup, every ``rescan_seconds``, when a folder is re-armed or comes
  back, after a reload, when the disk has space again, and when a directory
  is moved in (the watcher asks for a scan of just that directory); and it
  hashes a kept file an event named whose inode changed, when the settle
  stage asks (a *recheck*: syncd/kept.py).
* the settle stage (syncd/settle.py) then judges the rows that are due.

Scheduling: the main loop sleeps (:meth:`IntakeStage.sleep`) until the next
settling row is due a look, an event arrives, a scan ends, a signal comes or
the longest wait it was given (a quarter of a second, less when a watchdog
ping is due) is over, and it never ticks more than 1/:data:`MIN_TICK` times a
second, so a burst of events cannot take the main thread over.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from syncd import kept, limits, scanner
from syncd.backpressure import DiskFull
from syncd.events import Intake
from syncd.failure_kinds import is_disk_full
from syncd.ledger import Ledger
from syncd.liveness import Liveness, Pulse, local_allowance
from syncd.logs import quoted_path
from syncd.metrics import Metrics
from syncd.settle import Settler

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

MIN_TICK = 0.02  # seconds between two ticks however often the loop is woken
SHORT_RETRY = 2.0  # seconds before a scan syncd's own shortage cut short is done again
SHORT_TRIES = 30  # tries in a row (a minute); then the periodic rescan
RECHECK = "recheck"  # a scan request's reason: one kept file to compare with its upload


def flush(
    ledger: Ledger,
    intake: Intake,
    folders: Mapping[str, Any],
    *,
    request_scan: Callable[..., None],
    disk_full: DiskFull | None = None,
) -> None:
    """Write the paths events reported into the ledger, and ask for the scans they asked
    for (a directory moved in). With ``disk_full``, a full ledger pauses the uploads
    instead of raising."""
    paths, scans = intake.drain()
    pending = [(root, sorted(rels)) for root, rels in paths.items()]
    try:
        while pending:
            root, rels = pending[0]
            folder = folders.get(root)
            if folder is None or not rels:
                pending.pop(0)
                continue
            ledger.observe(
                root,
                rels[: scanner.BATCH],
                destination=folder.destination,
                labels=folder.labels,
                category=folder.category,
            )
            pending[0] = (root, rels[scanner.BATCH :])
    except BaseException as exc:
        # A busy, locked or full ledger must not lose what the events reported:
        # put back what was not recorded; the next tick tries again.
        for root, rels in pending:
            for rel in rels:
                intake.add(root, rel)
        for (root, rel), why in scans.items():
            intake.request_scan(root, rel, why)
        if isinstance(exc, sqlite3.Error) and is_disk_full(exc) and disk_full is not None:
            disk_full.note("ledger", exc)
            return  # reported and paused; the rest of the tick (health, STATUS) goes on
        raise
    for (root, rel), why in scans.items():
        request_scan(root, rel, reason=why)


class IntakeStage:
    """The intake buffer's flush, the scan queue and its thread, the settle tick and
    the main loop's sleep (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        intake: Intake,
        settler: Settler,
        *,
        folders: Callable[[], Mapping[str, Any]],
        folder_problem: Callable[[str], str | None],
        disk_full: DiskFull,
        metrics: Metrics,
        liveness: Liveness,
        nudge: threading.Event,
    ) -> None:
        self.ledger = ledger
        self.intake = intake
        self.settler = settler
        self._folders = folders
        self.folder_problem = folder_problem
        self.disk_full = disk_full
        self.metrics = metrics
        self.liveness = liveness
        # set by anything the main loop should act on now rather than at the next tick:
        # a signal, an event, a scan or an upload finished
        self.nudge = nudge
        intake.on_add = nudge.set
        self.ignored: dict[str, dict[str, Any]] = {}  # root -> names its last full scan ignored
        # root -> why its last whole-folder scan could not read it (`syncd once` scans each
        # folder once, at its start: one back later was still not read)
        self.unread: dict[str, str] = {}
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._pending = 0
        # (root, rel, a recheck) asked for, not begun: a recheck (one kept file) covers no scan
        self._queued: set[tuple[str, str, bool]] = set()
        self._lock = threading.Lock()
        self._short: dict[tuple[str, str], int] = {}  # scans syncd's own shortage cut short, tries
        self._thread = threading.Thread(target=self._scan_loop, name="scanner", daemon=True)
        self._stopping = threading.Event()  # a scan hashing kept files leaves the rest for later
        self._pulse: Pulse | None = None  # the scanner thread's heartbeat, once it runs
        # a kept file an event named, its inode changed: the scanner hashes it (syncd/kept.py)
        settler.recheck = lambda root, rel: self.request_scan(root, rel, reason=RECHECK)

    def tick(self) -> None:
        """Ledger what events reported; judge the settling rows that are due."""
        self.settler.follow_clock()  # before new rows get times of the clock as it is now
        flush(
            self.ledger,
            self.intake,
            self._folders(),
            request_scan=self.request_scan,
            disk_full=self.disk_full,
        )
        self.settler.tick()

    def sleep(self, began: float, longest: float, stop: threading.Event) -> None:
        """Until the next settling row is due a look or something wakes the loop (at most
        ``longest``), and at least until MIN_TICK after ``began`` (when this turn's tick
        began: a burst of events wakes the loop often, and each tick judges settling rows)."""
        self.nudge.wait(self._until_settle_due(longest))
        self.nudge.clear()
        spent = time.monotonic() - began
        if spent < MIN_TICK and not stop.is_set():
            stop.wait(MIN_TICK - spent)

    def _until_settle_due(self, longest: float) -> float:
        """Seconds until the next settling file is due a look (at most ``longest``)."""
        if self.settler.more:
            return 0.0  # the last tick left due rows behind: go on at once
        try:
            due = self.ledger.next_settle_due()
        except sqlite3.Error:
            return longest
        return longest if due is None else min(longest, max(0.0, due - time.time()))

    # scans -------------------------------------------------------------------

    def start_scanner(self) -> None:
        self._thread.start()

    def stop_scanner(self) -> None:
        """The scanner ends after the scan in progress (queued scans are dropped with it)."""
        self._stopping.set()
        self._queue.put(None)

    def request_scan(self, root: str, rel: str = "", *, reason: str = "periodic") -> None:
        """Queue a scan of ``root`` (below ``rel``), unless one that covers it is queued
        and not begun yet: a burst of new directories, or periodic scans while a long one
        runs, would pile up and each read the folder again. ``reason`` :data:`RECHECK`:
        ``rel`` is one kept file to compare with its upload (syncd/kept.py), not a directory."""
        with self._lock:
            key = (root, rel, reason == RECHECK)
            if (root, "", False) in self._queued or key in self._queued:
                return
            self._queued.add(key)
            self._pending += 1
        self._queue.put((root, rel, reason))

    def scans_pending(self) -> bool:
        with self._lock:
            return self._pending > 0

    def _scan_loop(self) -> None:
        pulse = self._pulse = self.liveness.pulse("scanner", "scan")
        try:
            while True:
                pulse.idle()
                item = self._queue.get()
                if item is None:
                    return
                root, rel, reason = item
                with self._lock:
                    self._queued.discard((root, rel, reason == RECHECK))  # asked again: done again
                pulse.step(f"scanning {quoted_path(os.path.join(root, rel) if rel else root)}")
                try:
                    self._scan(root, rel, reason)
                finally:
                    with self._lock:
                        self._pending -= 1
                    self.nudge.set()
        finally:
            self.liveness.release(pulse)

    def _scan(self, root: str, rel: str, reason: str) -> None:
        try:
            folder = self._folders().get(root)
            problem = self.folder_problem(root) if folder is not None else None
            if folder is None or problem is not None:
                if problem is not None and not rel:
                    self.unread[root] = problem
                return  # reported by the health check; never scan an unmounted folder
            if reason == RECHECK:
                kept.recheck(self.ledger, folder, rel, looking=self._hashing, stop=self._stopping)
                return
            started = time.monotonic()
            ignored = scanner.Ignored()
            found = scanner.scan_folder(
                self.ledger,
                folder,
                start=rel,
                on_special=lambda r, m: self.settler.skip_special(root, r, m),
                ignored=ignored,
                looking=self._hashing,
                stop=self._stopping,
            )
            if not rel:  # a walk of the whole folder: what it ignored, for `syncd status`
                self.unread.pop(root, None)
                self.ignored[root] = {"count": ignored.count, "examples": ignored.examples, "at": time.time()}
            self.metrics.observe_scan(root, reason, found)
            if found:
                log.info(
                    "scan of %s found %d new file(s) in %.2fs",
                    quoted_path(os.path.join(root, rel) if rel else root),
                    found,
                    time.monotonic() - started,
                )
        except sqlite3.Error as exc:
            log.error("ledger error during scan of %s: %s", quoted_path(root), exc)
        except OSError as exc:
            if (kind := limits.shortage(exc)) is None:
                log.exception("scan of %s failed", quoted_path(root))
            else:  # syncd out of descriptors: said once (limits.py); the scan is done again
                self._cut_short(root, rel, reason, kind, exc)
        except Exception:
            log.exception("scan of %s failed", quoted_path(root))
        else:
            self._short.pop((root, rel), None)

    def _hashing(self, path: str, size: int) -> None:
        """A kept file whose inode changed is hashed: progress, with the time its read may take."""
        if self._pulse is not None:
            self._pulse.phase(f"hashing kept file {quoted_path(path)}", local_allowance(size))

    def _cut_short(self, root: str, rel: str, reason: str, kind: str, exc: OSError) -> None:
        """A scan syncd's own shortage cut short is asked again in SHORT_RETRY seconds, for
        SHORT_TRIES tries in a row (then the periodic rescan), not at the next periodic one."""
        self.settler.shortages.note(kind, exc)
        if not rel:
            self.unread[root] = limits.explain(kind, exc)
        tries = self._short[(root, rel)] = self._short.get((root, rel), 0) + 1
        log.debug("scan of %s cut short (%s), try %d", quoted_path(root), exc, tries)
        if tries < SHORT_TRIES:
            time.sleep(SHORT_RETRY)
            self.request_scan(root, rel, reason=reason)
