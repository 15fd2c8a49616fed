"""Watching folders with watchdog; the handler only records.

The watchdog handler runs on watchdog's emitter thread and must never block:
it maps an event to ``(folder, relative path)``, drops what the folder's
rules ignore, and puts the path into :class:`Intake`, a thread-safe buffer
that the daemon's main loop flushes into the ledger in batches. A new or
moved-in directory is put in as a *scan request*, because files created in
it before its watch existed produce no events.

:class:`Watcher` owns the observers: one native (inotify) observer for all
folders, and polling observers for folders that ask for it (network shares)
or that could not get an inotify watch (limits reached: the fallback is
logged with the sysctl to raise). :meth:`Watcher.check_health` notices a
folder that is missing, or was deleted and recreated (its inode changed),
releases its watch, and re-arms it when the folder is back; the caller then
rescans it. A folder that vanished is never taken to mean its files are gone.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from syncd import rules
from syncd.logs import qp

log = logging.getLogger(__name__)

_FILE_EVENTS = {"created", "modified", "closed", "moved"}


class Intake:
    """Paths reported by events, waiting to be ledgered by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, set[str]] = {}
        self._scans: set[tuple[str, str]] = set()
        self.events = 0

    def add(self, folder: str, relpath: str) -> None:
        with self._lock:
            self._paths.setdefault(folder, set()).add(relpath)
            self.events += 1

    def request_scan(self, folder: str, reldir: str) -> None:
        with self._lock:
            self._scans.add((folder, reldir))

    def drain(self) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
        with self._lock:
            paths, scans = self._paths, self._scans
            self._paths, self._scans = {}, set()
        return paths, scans


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: Any, intake: Intake) -> None:
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
        rel = path[len(self.root) + 1:]
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
        if kind not in _FILE_EVENTS:
            return
        path = event.dest_path if kind == "moved" else event.src_path
        rel = self._relative(path)
        if rel is None:
            return
        if event.is_directory:
            if kind in ("created", "moved") and self.folder.recursive:
                if not rules.dir_ignored(rel, exclude=self.folder.exclude,
                                         ignore_junk=self.folder.ignore_junk):
                    self.intake.request_scan(self.root, rel)
            return
        if rules.judge(rel, include=self.folder.include, exclude=self.folder.exclude,
                       ignore_junk=self.folder.ignore_junk).accepted:
            self.intake.add(self.root, rel)


@dataclass
class FolderWatch:
    folder: Any
    watch: ObservedWatch | None = None
    observer: BaseObserver | None = None
    inode: int | None = None
    device: int | None = None
    mode: str = "none"  # native | polling | none
    problem: str | None = None


class Watcher:
    """Schedules and re-arms watches; see the module docstring."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._native: BaseObserver | None = None
        self._polling: dict[float, BaseObserver] = {}
        self.folders: dict[str, FolderWatch] = {}
        self._lock = threading.Lock()

    # observers -----------------------------------------------------------

    def _native_observer(self) -> BaseObserver:
        if self._native is None:
            self._native = Observer()
            self._native.daemon = True
            self._native.start()
        return self._native

    def _polling_observer(self, interval: float) -> BaseObserver:
        obs = self._polling.get(interval)
        if obs is None:
            obs = PollingObserver(timeout=interval)
            obs.daemon = True
            obs.start()
            self._polling[interval] = obs
        return obs

    def observers_alive(self) -> bool:
        observers = ([self._native] if self._native else []) + list(self._polling.values())
        return all(o.is_alive() for o in observers)

    # folders -------------------------------------------------------------

    def set_folders(self, folders: Iterable[Any]) -> list[str]:
        """Watch exactly these folders (config load or reload). Returns folders newly armed."""
        wanted = {os.fspath(f.path): f for f in folders}
        armed = []
        with self._lock:
            for root in list(self.folders):
                if root not in wanted or self.folders[root].folder != wanted[root]:
                    self._release(self.folders.pop(root))
            for root, folder in wanted.items():
                if root not in self.folders:
                    fw = FolderWatch(folder)
                    self.folders[root] = fw
                    if self._arm(fw):
                        armed.append(root)
        return armed

    def _arm(self, fw: FolderWatch) -> bool:
        root = os.fspath(fw.folder.path)
        try:
            st = os.stat(root)
        except OSError as exc:
            if fw.problem is None or fw.mode != "none":
                log.error("watched folder %s is not available: %s; retrying", qp(root),
                          exc.strerror or exc)
            fw.problem = f"folder missing: {exc.strerror or exc}"
            fw.mode = "none"
            return False
        handler = _Handler(fw.folder, self.intake)
        mode = "polling" if fw.folder.observer == "polling" else "native"
        try:
            if mode == "native":
                fw.observer = self._native_observer()
            else:
                fw.observer = self._polling_observer(fw.folder.poll_seconds)
            fw.watch = fw.observer.schedule(handler, root, recursive=fw.folder.recursive)
        except OSError as exc:
            if mode == "native" and exc.errno in (errno.ENOSPC, errno.EMFILE):
                sysctl = ("fs.inotify.max_user_watches" if exc.errno == errno.ENOSPC
                          else "fs.inotify.max_user_instances")
                log.warning("inotify limit reached for %s (%s); falling back to polling every "
                            "%.0fs. Raise sysctl %s to watch it natively.", qp(root),
                            exc.strerror, fw.folder.poll_seconds, sysctl)
                mode = "polling"
                fw.observer = self._polling_observer(fw.folder.poll_seconds)
                fw.watch = fw.observer.schedule(handler, root, recursive=fw.folder.recursive)
            else:
                fw.problem = f"cannot watch: {exc.strerror or exc}"
                log.error("cannot watch %s: %s; retrying", qp(root), exc.strerror or exc)
                return False
        if fw.problem and fw.problem.startswith("folder missing"):
            log.warning("watched folder %s is back; watching it again", qp(root))
        fw.mode, fw.inode, fw.device, fw.problem = mode, st.st_ino, st.st_dev, None
        log.info("watching %s (%s%s)", qp(root), mode, ", recursive" if fw.folder.recursive else "")
        return True

    def _release(self, fw: FolderWatch) -> None:
        if fw.observer is not None and fw.watch is not None:
            try:
                fw.observer.unschedule(fw.watch)
            except (KeyError, OSError, ValueError):
                pass
        fw.watch, fw.observer, fw.mode = None, None, "none"

    def check_health(self) -> list[str]:
        """Re-check every folder; returns the roots that were (re)armed and need a rescan."""
        rearmed = []
        with self._lock:
            for root, fw in self.folders.items():
                try:
                    st = os.stat(root)
                    same = (st.st_ino, st.st_dev) == (fw.inode, fw.device)
                except OSError as exc:
                    if fw.mode != "none":
                        log.error("watched folder %s disappeared (%s); files already ledgered "
                                  "stay queued; waiting for it to come back", qp(root),
                                  exc.strerror or exc)
                        self._release(fw)
                        fw.problem = f"folder missing: {exc.strerror or exc}"
                    continue
                if fw.mode != "none" and same and fw.watch is not None and \
                        (fw.observer is None or fw.observer.is_alive()):
                    continue
                if fw.mode != "none":
                    log.warning("watched folder %s was replaced; watching the new one", qp(root))
                    self._release(fw)
                if self._arm(fw):
                    rearmed.append(root)
        return rearmed

    def problems(self) -> dict[str, str]:
        return {root: fw.problem for root, fw in self.folders.items() if fw.problem}

    def stop(self) -> None:
        observers = ([self._native] if self._native else []) + list(self._polling.values())
        for obs in observers:
            obs.stop()
        for obs in observers:
            obs.join(timeout=5)
        self._native = None
        self._polling.clear()
        self.folders.clear()
