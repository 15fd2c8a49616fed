"""Finished-file detection: promote ``settling`` rows once the file is quiet.

A file is finished when its size, mtime and inode have not changed for the
folder's ``settle_seconds``. Events (close-after-write, moved-in) only make
the watcher record the path; they are never taken as proof, so a writer that
closes and reopens the file restarts the quiet time instead of causing an
early upload. Each :meth:`Settler.tick` stats every settling row once:

* gone before it was ever seen whole: the row is forgotten (a temp name);
  gone after we saw it: ``vanished``;
* not a regular file (symlink, FIFO, socket, device, directory), or reached
  through a symlinked directory: skipped with one log line; such paths are
  never opened (every lookup goes through :mod:`syncd.safefs`);
* no longer wanted by the folder's rules (config reload): forgotten;
* changed since the last tick: the quiet time restarts;
* identical to the newest finished version of the same path (a kept file, or
  one left in place after failing): forgotten, it is not a new version;
* quiet for ``settle_seconds``: ``queued``. A file that keeps changing for
  longer than ``max_settle_seconds`` (when set) is queued anyway; without it,
  a warning is logged once.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from syncd import rules, safefs
from syncd.ledger import Ledger, Row
from syncd.logs import qp

log = logging.getLogger(__name__)

LONG_SETTLE_WARNING = 600.0  # seconds of continuous change before we say so


class Settler:
    def __init__(self, ledger: Ledger, folders: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float] = time.time,
                 on_queued: Callable[[], None] = lambda: None) -> None:
        self.ledger = ledger
        self._folders = folders  # folder path (str) -> FolderConfig, re-read each tick
        self.clock = clock
        self.on_queued = on_queued
        self._warned: set[int] = set()
        self._skipped_logged: set[tuple[str, str]] = set()

    def tick(self) -> int:
        """Judge every settling row once; returns how many were queued."""
        folders = self._folders()
        queued = 0
        for row in self.ledger.settling():
            folder = folders.get(row.folder)
            if folder is None:
                continue  # folder removed from config; the row waits (or a reload restores it)
            try:
                if self._judge(row, folder):
                    queued += 1
            except OSError as exc:
                log.warning("cannot check %s: %s", qp(row.inbox_path), exc.strerror or exc)
        if queued:
            self.on_queued()
        return queued

    def _judge(self, row: Row, folder: Any) -> bool:
        verdict = rules.judge(row.relpath, include=folder.include, exclude=folder.exclude,
                              ignore_junk=folder.ignore_junk)
        if not verdict.accepted:
            self.ledger.forget(row.id)
            return False
        try:
            st = safefs.lstat(row.folder, row.relpath)
        except safefs.UnsafePath:
            # A directory on the way was swapped for a symlink: the path leads out of
            # the folder, so it is never looked at, opened or uploaded.
            self.skip_special(row.folder, row.relpath, stat.S_IFLNK)
            self.ledger.forget(row.id)
            return False
        except (FileNotFoundError, NotADirectoryError):
            if row.size is None:
                self.ledger.forget(row.id)
            else:
                self.ledger.mark_vanished(row.id, reason="disappeared while being written")
                log.info("vanished before upload: %s", qp(row.inbox_path))
            return False
        if not stat.S_ISREG(st.st_mode):
            self.skip_special(row.folder, row.relpath, st.st_mode)
            self.ledger.forget(row.id)
            return False
        now = self.clock()
        changed = (st.st_size, st.st_mtime_ns, st.st_ino) != (row.size, row.mtime_ns, row.inode) \
            or st.st_dev != (row.device if row.device is not None else st.st_dev)
        if changed or row.device is None:
            self.ledger.note_stat(row.id, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                  inode=st.st_ino, device=st.st_dev, changed=changed)
        if changed:
            if folder.max_settle_seconds and now - row.first_seen >= folder.max_settle_seconds:
                log.warning("still changing after %.0fs, uploading anyway (max_settle_seconds): %s",
                            now - row.first_seen, qp(row.inbox_path))
                self.ledger.promote(row.id)
                return True
            if now - row.first_seen >= LONG_SETTLE_WARNING and row.id not in self._warned:
                self._warned.add(row.id)
                log.warning("still being written after %.0fs, waiting for it to be quiet for "
                            "%.1fs: %s", now - row.first_seen, folder.settle_seconds,
                            qp(row.inbox_path))
            if folder.settle_seconds > 0:
                return False
            # settle_seconds = 0: one look is enough, queue it now (no second tick)
        quiet_since = now if changed else row.changed_at
        if now - quiet_since < folder.settle_seconds:
            return False
        previous = self.ledger.previous_version(row)
        if previous is not None and previous.location is None and \
                previous.state in ("done", "failed", "skipped") and \
                (previous.size, previous.mtime_ns, previous.inode) == (st.st_size, st.st_mtime_ns,
                                                                       st.st_ino):
            self.ledger.forget(row.id)
            return False
        if self.ledger.inode_busy(replace(row, inode=st.st_ino)) is not None:
            return False  # the same file is being uploaded under its old name
        self.ledger.promote(row.id)
        self._warned.discard(row.id)
        log.info("queued %s (%d bytes)", qp(row.inbox_path), st.st_size)
        return True

    def skip_special(self, folder: str, relpath: str, mode: int) -> None:
        """Log, once per path, that a non-regular file is skipped."""
        key = (folder, relpath)
        if key in self._skipped_logged:
            return
        self._skipped_logged.add(key)
        kind = describe_mode(mode)
        log.warning("skipping %s: it is a %s, not a regular file", qp(os.path.join(folder, relpath)), kind)


def describe_mode(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink (symlinks are never followed)"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"
