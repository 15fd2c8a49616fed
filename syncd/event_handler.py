"""Recording watchdog events: the handler that fills the :class:`~syncd.events.Intake` buffer.

The handler runs on watchdog's emitter thread and must never block: it maps
an event to ``(folder, relative path)``, drops what the folder's rules
ignore, and puts the path into :class:`~syncd.events.Intake`, a thread-safe buffer that the
daemon's main loop flushes into the ledger in batches (syncd/intake.py). A
new or moved-in directory is put in as a *scan request*, because files
created in it before its watch existed produce no events; so is the whole
folder when the kernel's event queue overflowed (watchdog's ``events_lost``). The observers that
deliver the events are in syncd/watcher.py, which imports this module when it
first watches a folder.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from syncd import rules
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig
    from syncd.events import Intake

log = logging.getLogger("syncd.watcher")  # the watch stage's lines keep one logger name

_FILE_EVENTS = {"created", "modified", "closed", "moved"}
# The events the handler records, the observers' ``event_filter``: watchdog asks the kernel
# for no others and drops the rest before they are queued. syncd's own opens of every file
# it settles, hashes and archives (IN_OPEN, IN_CLOSE_NOWRITE) were otherwise events parsed
# in Python and thrown away, a few per file. DirDeletedEvent keeps IN_DELETE in the mask:
# watchdog's recursive watches use it for a subdirectory deleted and made again.
EVENT_FILTER = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    EventsLostEvent,
]


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: FolderConfig, intake: Intake) -> None:
        self.folder = folder
        self.root = os.fspath(folder.path)
        self.skip = tuple(os.fspath(p) for p in folder.ignored_dirs())
        self.intake = intake

    def _relative(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        if path == self.root or not path.startswith(self.root + os.sep):
            return None
        if any(path == s or path.startswith(s + os.sep) for s in self.skip):
            return None
        rel = path[len(self.root) + 1 :]
        if not self.folder.recursive and "/" in rel:
            return None
        return rel

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._record(event)
        except Exception:  # never let an odd event kill the emitter thread
            log.exception("could not record event %s", event.event_type)

    def _record(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind == "events_lost":  # the kernel's inotify queue overflowed: rescan the folder
            log.warning(
                "file events were lost in %s (the kernel's event queue overflowed); scanning it again",
                quoted_path(self.root),
            )
            self.intake.request_scan(self.root, "", "overflow")
            return
        if kind not in _FILE_EVENTS:
            return
        path = event.dest_path if kind == "moved" else event.src_path
        rel = self._relative(path)
        if rel is None:
            return
        if event.is_directory:
            if (
                kind in ("created", "moved")
                and self.folder.recursive
                and not rules.dir_ignored(
                    rel, exclude=self.folder.exclude, ignore_junk=self.folder.ignore_junk
                )
            ):
                self.intake.request_scan(self.root, rel)
            return
        if rules.judge(
            rel,
            include=self.folder.include,
            exclude=self.folder.exclude,
            ignore_junk=self.folder.ignore_junk,
            sidecars=self.folder.metadata_sidecar,
        ).accepted:
            self.intake.add(self.root, rel)
