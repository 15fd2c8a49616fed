"""Finished-file detection: promote ``settling`` rows once the file is quiet.

A file is finished when its size, mtime and inode have not changed for the
folder's ``settle_seconds``. Events (close-after-write, moved-in) only make
the watcher record the path; they are never taken as proof, so a writer that
closes and reopens the file restarts the quiet time instead of causing an
early upload. Each row carries when it is due its next look (``due_at``,
indexed): when its quiet time would be over, or at once when an event names
it. Each :meth:`Settler.tick` stats the rows that are due, at most
:data:`BATCH` of them, so a backlog of 100,000 settling files never makes
one tick long. A look finds:

* gone before it was ever seen whole: the row is forgotten (a temp name);
  gone after we saw it: ``vanished``;
* not a regular file (symlink, FIFO, socket, device, directory), or reached
  through a symlinked directory: skipped with one log line; such paths are
  never opened (every lookup goes through :mod:`syncd.safefs`);
* no longer wanted by the folder's rules (config reload): forgotten;
* changed since the last tick: the quiet time restarts;
* the finished version kept at its path (after_upload = "keep", or failed in
  place: :mod:`syncd.kept`): forgotten, not a new version; one whose inode
  change time moved is hashed by the scanner thread (``recheck``);
* quiet for ``settle_seconds`` but still open for writing by some process
  (:mod:`syncd.writers` asks the kernel): it waits for the writer to close it,
  however long the writer pauses; with ``max_settle_seconds`` no longer than
  that;
* quiet for ``settle_seconds``: ``queued``. A file that keeps changing for
  longer than ``max_settle_seconds`` (when set) is queued anyway; without it,
  a warning is logged once.
* with ``metadata_sidecar = true``, a sidecar ``NAME.meta.json`` present
  beside the file must have been quiet (size, mtime, inode) for
  ``settle_seconds`` too; its quiet time runs alongside the file's, from
  the first tick that sees it (kept in memory: a restart starts it afresh);
  one still changing ``metadata.SIDECAR_PATIENCE`` after the file was first
  seen is not waited for any longer (a warning, once).
  A sidecar that appears later is not waited for (see docs/configuration.md).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from syncd import kept, limits, metadata, rules, safefs, writers
from syncd.away import AwayFolders
from syncd.ledger import Ledger, Row, Stat, State
from syncd.logs import quoted_path
from syncd.same_file import InodeWaits, same_file_waits
from syncd.skipped import Skipped

if TYPE_CHECKING:
    from syncd.clock_steps import ClockSteps
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)

LONG_SETTLE_WARNING = 600.0  # seconds of continuous change before we say so
BATCH = 2000  # rows judged per tick at most: signals, reload and the watchdog wait for no backlog
WAKE_EVERY = 64  # within a tick, wake the uploaders every this many queued files
MIN_LOOK = 0.05  # never look at a row again sooner than this (a busy row must not spin)
WAIT_LOOK = 1.0  # a row that cannot be judged now (its file busy under another name): look again then
AWAY_LOOK = 300.0  # a row whose folder is away or left the config (due at once on its return)
ERROR_LOOK = 10.0  # a row whose file could not be looked at (an I/O error): look again then
LONGEST_LOOK = max(WAIT_LOOK, AWAY_LOOK, ERROR_LOOK)  # beside settle_seconds, the furthest look ahead
SIDECAR_PRUNE = 10_000  # remembered sidecar stats before those of rows gone are dropped
QUEUED = float("-inf")  # _judge's answer for "queued now"


class Settler:
    def __init__(
        self,
        ledger: Ledger,
        folders: Callable[[], Mapping[str, Any]],
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[], None] = lambda: None,
        steps: ClockSteps | None = None,
        away: AwayFolders | None = None,
        shortages: limits.Shortages | None = None,
    ) -> None:
        self.ledger = ledger
        self.shortages = shortages or limits.Shortages()  # syncd out of descriptors: said once
        self.steps = steps  # the daemon's: quiet times follow a stepped clock
        self._folders = folders  # folder path (str) -> FolderConfig, re-read each tick
        self.clock = clock
        self.on_queued = on_queued
        self.recheck: Callable[[str, str], None] = lambda root, relpath: None  # set by the intake stage
        self._warned: set[int] = set()
        # rows found open for writing by a process: row id -> (folder, what was said: 0 the
        # wait, 1 after LONG_SETTLE_WARNING, 2 uploading anyway); `syncd once` leaves them
        self._held: dict[int, tuple[str, int]] = {}
        self.skipped = Skipped()  # non-regular paths said to be skipped
        # row id -> (sidecar (size, mtime_ns, inode, device), quiet since)
        self._sidecars: dict[int, tuple[tuple[int, int, int, int], float]] = {}
        self._sidecar_late: set[int] = set()  # rows whose sidecar is no longer waited for (said once)
        self.away = away or AwayFolders()  # folders whose files were put off while away
        self.more = False  # the last tick left due rows for the next one
        self._noted: dict[int, Stat] = {}  # row id -> a new stat not yet written (this tick)
        # rows judged quiet this tick, promoted together (one transaction per WAKE_EVERY),
        # and their (folder, inode): a second name of the same file waits for the first
        self._promoting: list[tuple[int, Stat | None]] = []
        self._promoting_inodes: set[tuple[str, int]] = set()
        self.same_file = InodeWaits()  # rows that wait for another name of their file

    def tick(self) -> int:
        """Judge the settling rows that are due (at most BATCH); returns how many were queued.

        Each row judged gets its next look (``due_at``): when its quiet time
        would be over, or at once when an event names it. More rows due than
        one batch: :attr:`more` is set and the caller comes back at once.
        """
        self.follow_clock()
        writers.forget_devices()
        folders = self._folders()
        for root in self.away.back(folders):  # back: what waited for it is due now
            if self.ledger.folder_back(root):
                self.on_queued()  # uploads put off for it: the workers take them now
        queued = 0
        now = self.clock()
        self.ledger.set_due([(row_id, now) for row_id in self.same_file.due()])
        rows = self.ledger.settling_due(now, BATCH)
        self.more = len(rows) == BATCH
        looks: list[tuple[int, float]] = []
        failed: list[tuple[Row, OSError]] = []
        for row in rows:
            folder = folders.get(row.folder)
            if folder is None:
                # Its folder left the config or is away (unmounted, missing): looked at
                # rarely until it is back, when they are all due at once (100,000 rows
                # looked at every second kept the main loop busy and other folders' files
                # waiting).
                looks.append((row.id, now + AWAY_LOOK))
                self.away.note(row.folder)
                continue
            try:
                look = self._judge(row, folder, now)
            except OSError as exc:
                failed.append((row, exc))
                look = now + ERROR_LOOK
            if look is QUEUED:
                queued += 1
                if queued % WAKE_EVERY == 0:
                    self._flush_promotions()
                    self.on_queued()  # a long tick: idle workers start on what is queued so far
            elif look is not None:
                looks.append((row.id, max(look, now + MIN_LOOK)))
            else:
                self._sidecars.pop(row.id, None)
        self._flush_promotions()
        for _, error in failed:
            if (kind := limits.shortage(error)) is not None:
                self.shortages.note(kind, error)
        failed = [(row, error) for row, error in failed if limits.shortage(error) is None]
        if failed:  # one line a tick, not one a file: a dead disk fails every file at once
            first, error = failed[0]
            log.warning(
                "cannot check %d settling file(s) (%s: %s%s); looking again in %.0fs",
                len(failed),
                quoted_path(first.inbox_path),
                error.strerror or error,
                f", and {len(failed) - 1} more" if len(failed) > 1 else "",
                ERROR_LOOK,
            )
        self.ledger.set_due(looks, self._noted)
        self._noted = {}
        if len(self._sidecars) + len(self._held) + len(self._warned) > SIDECAR_PRUNE:
            alive = self.ledger.settling_ids()
            self._warned &= alive
            self._sidecars = {k: v for k, v in self._sidecars.items() if k in alive}
            self._held = {k: v for k, v in self._held.items() if k in alive}
            self._sidecar_late &= alive
        if queued:
            self.on_queued()
        return queued

    def follow_clock(self) -> None:
        """If the wall clock was stepped since the last look, every quiet time moves with
        it, so none is cut short (a file still being written would be sent half-written)
        or drawn out. Each tick starts with it; the intake stage also calls it before it
        ledgers new paths, so that their first times are not moved by a step before them."""
        step = self.steps.check() if self.steps is not None else 0.0
        if not step:
            return
        moved = self.ledger.shift_settling(step)
        self._sidecars = {k: (key, since + step) for k, (key, since) in self._sidecars.items()}
        log.warning(
            "the system clock was stepped %s by %.1fs; the quiet times of %d settling file(s) move with it",
            "forward" if step > 0 else "back",
            abs(step),
            moved,
        )

    def _judge(self, row: Row, folder: FolderConfig, now: float) -> float | None:
        """Look at one settling row: :data:`QUEUED`, None when it left settling
        otherwise (forgotten, vanished), or when to look at it next."""
        verdict = rules.judge(
            row.relpath,
            include=folder.include,
            exclude=folder.exclude,
            ignore_junk=folder.ignore_junk,
            sidecars=folder.metadata_sidecar,
        )
        if not verdict.accepted:
            self.ledger.forget(row.id)
            return None
        try:
            st = safefs.lstat(row.folder, row.relpath)
        except safefs.UnsafePath:
            # A directory on the way was swapped for a symlink: the path leads out of
            # the folder, so it is never looked at, opened or uploaded.
            self.skip_special(row.folder, row.relpath, stat.S_IFLNK)
            self.ledger.forget(row.id)
            return None
        except (FileNotFoundError, NotADirectoryError):
            if row.size is None:
                self.ledger.forget(row.id)
            else:
                self.ledger.mark_vanished(row.id, reason="disappeared while being written")
                log.info("vanished before upload: %s", quoted_path(row.inbox_path))
            return None
        if not stat.S_ISREG(st.st_mode):
            self.skip_special(row.folder, row.relpath, st.st_mode)
            self.ledger.forget(row.id)
            return None
        changed = (st.st_size, st.st_mtime_ns, st.st_ino) != (
            row.size,
            row.mtime_ns,
            row.inode,
        ) or st.st_dev != (row.device if row.device is not None else st.st_dev)
        # A change recorded "in the future" was seen before the clock was stepped back: the
        # quiet time starts again now, instead of lasting as long as the step.
        restart = changed or row.changed_at > now
        # the new stat is written with this row's verdict, in one transaction (promote,
        # or the tick's set_due)
        noted = (
            Stat(
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                inode=st.st_ino,
                device=st.st_dev,
                changed_at=now if restart else None,
            )
            if restart or row.device is None
            else None
        )
        if noted is not None:
            self._noted[row.id] = noted
        sidecar_since = self._sidecar_since(row, folder, now)  # its quiet time runs from any look
        if sidecar_since and now - row.first_seen >= metadata.SIDECAR_PATIENCE:
            sidecar_since = 0.0  # still changing after so long: taken as it is (the upload's bound)
            if row.id not in self._sidecar_late:
                self._sidecar_late.add(row.id)
                log.warning(
                    "its metadata sidecar is still changing after %.0fs; not waiting for it any longer: %s",
                    now - row.first_seen,
                    quoted_path(row.inbox_path),
                )
        if changed:
            if folder.max_settle_seconds and now - row.first_seen >= folder.max_settle_seconds:
                log.warning(
                    "still changing after %.0fs, uploading anyway (max_settle_seconds): %s",
                    now - row.first_seen,
                    quoted_path(row.inbox_path),
                )
                self._promote(row, st.st_ino)
                return QUEUED
            if now - row.first_seen >= LONG_SETTLE_WARNING and row.id not in self._warned:
                self._warned.add(row.id)
                log.warning(
                    "still being written after %.0fs, waiting for it to be quiet for %.1fs: %s",
                    now - row.first_seen,
                    folder.settle_seconds,
                    quoted_path(row.inbox_path),
                )
            settle = float(folder.settle_seconds)
            if settle > 0:
                return now + settle
            # settle_seconds = 0: one look is enough, queue it now (no second tick)
        quiet_since = now if restart else row.changed_at
        quiet_from = max(quiet_since, sidecar_since)
        if now - quiet_from < folder.settle_seconds:
            return quiet_from + float(folder.settle_seconds)
        if kept.known(self.ledger, row, st, self.recheck):
            self.ledger.forget(row.id)
            return None
        if self._held_open(row, st):
            if not folder.max_settle_seconds or now - row.first_seen < folder.max_settle_seconds:
                return now + max(float(folder.settle_seconds), WAIT_LOOK)  # its close is an event
            if self._held.get(row.id, ("", 0))[1] < 2:  # said once, not at each look
                self._held[row.id] = (row.folder, 2)
                log.warning(
                    "still open for writing after %.0fs, uploading anyway (max_settle_seconds): %s",
                    now - row.first_seen,
                    quoted_path(row.inbox_path),
                )
        if (row.folder, st.st_ino) in self._promoting_inodes or same_file_waits(
            self.ledger.inode_busy(replace(row, inode=st.st_ino))
        ):
            self.same_file.note(row.folder, st.st_ino, row.id)  # due again when that upload is over
            return now + WAIT_LOOK  # the same file is being uploaded under another name
        self._promote(row, st.st_ino)
        self._warned.discard(row.id)
        self._held.pop(row.id, None)
        self._sidecar_late.discard(row.id)
        log.info("queued %s (%d bytes)", quoted_path(row.inbox_path), st.st_size)
        return QUEUED

    def held_by_folder(self) -> dict[str, int]:
        """Settling files that wait for a process to close them, per folder (`syncd once`
        does not wait for them)."""
        held: dict[str, int] = {}
        for row_id, (folder, _said) in list(self._held.items()):
            row = self.ledger.get(row_id)
            if row is None or row.state != State.SETTLING:
                del self._held[row_id]  # forgotten, vanished, queued by max_settle_seconds
                continue
            held[folder] = held.get(folder, 0) + 1
        return held

    def _held_open(self, row: Row, st: os.stat_result) -> bool:
        """Whether a process still has the quiet file open for writing (a writer that
        paused longer than settle_seconds); said once per file, and again after
        :data:`LONG_SETTLE_WARNING`. False when the kernel cannot tell."""
        if not writers.file_held_for_writing(row.folder, row.relpath, st.st_dev):
            return False
        waited = self.clock() - row.first_seen
        said = self._held.get(row.id)
        if said is None:
            self._held[row.id] = (row.folder, 0)
            log.info(
                "no change for settle_seconds, but still open for writing by a process; "
                "waiting until it is closed: %s",
                quoted_path(row.inbox_path),
            )
        elif waited >= LONG_SETTLE_WARNING and said[1] < 1:
            self._held[row.id] = (row.folder, 1)
            log.warning(
                "still open for writing after %.0fs, waiting until it is closed (set "
                "max_settle_seconds to upload such files anyway): %s",
                waited,
                quoted_path(row.inbox_path),
            )
        return True

    def _promote(self, row: Row, inode: int) -> None:
        """Queue ``row`` with this tick's promotions (written by :meth:`_flush_promotions`)."""
        self._promoting.append((row.id, self._noted.pop(row.id, None)))
        self._promoting_inodes.add((row.folder, inode))

    def _flush_promotions(self) -> None:
        """settling -> queued for the rows judged quiet so far, in one transaction."""
        self.ledger.promote_many(self._promoting)
        self._promoting = []
        self._promoting_inodes = set()

    def _sidecar_since(self, row: Row, folder: FolderConfig, now: float) -> float:
        """Since when the row's metadata sidecar has been quiet (0.0: none to wait for)."""
        if not getattr(folder, "metadata_sidecar", False):
            return 0.0
        st = metadata.sidecar_stat(row.folder, row.relpath)  # out of descriptors: raises (a look later)
        if st is None:  # none (the usual case), or behind a symlink: the upload reports it
            self._sidecars.pop(row.id, None)
            return 0.0
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        seen = self._sidecars.get(row.id)
        if seen is None or seen[0] != key or seen[1] > now:  # new, changed, or before a clock step
            self._sidecars[row.id] = (key, now)
            return now
        return seen[1]

    def skip_special(self, folder: str, relpath: str, mode: int) -> None:
        """Log, once per path, that a non-regular file is skipped (:mod:`syncd.skipped`)."""
        self.skipped.note(folder, relpath, mode)
