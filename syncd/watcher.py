"""Watching folders with watchdog; the handler only records.

The watchdog handler runs on watchdog's emitter thread and must never block:
it maps an event to ``(folder, relative path)``, drops what the folder's
rules ignore, and puts the path into :class:`~syncd.events.Intake`, a thread-safe buffer
that the daemon's main loop flushes into the ledger in batches. A new or
moved-in directory is put in as a *scan request*, because files created in
it before its watch existed produce no events.

:class:`Watcher` owns the observers: one native (inotify) observer for all
folders, and polling observers for folders that ask for it (network shares)
or that could not get an inotify watch (limits reached: the fallback is
logged with the sysctl to raise). syncd out of file descriptors is not an
inotify limit: a folder it could not arm is its problem until they are free,
and one with a new sub-folder it could not watch is watched again and
rescanned then (syncd/safe_watch.py).

Folder health, checked by :meth:`Watcher.check_health` every few seconds
(Syncthing's approach): a folder is *usable* when it exists, is a directory,
holds its ``marker`` file when the folder names one, and sits on the same
device (``st_dev``) as when it was first watched. A folder that is missing,
unmounted (its device changed: the empty mount point is not the inbox) or
lacks its marker has its watch released, is reported (log, STATUS, ``syncd
status``) and is neither scanned nor read from; when it is usable again it
is re-armed and the caller rescans it. A folder deleted and recreated
between two checks (same path, new inode) is re-armed too. A folder that
vanished is never taken to mean its files are gone. :func:`probe` is the
same check for one folder (:mod:`syncd.folder_probe`), for callers without a
Watcher (``syncd once``).

watchdog, and what syncd builds on it (syncd/safe_watch.py, syncd/event_handler.py),
are imported when a folder is first armed: ``syncd once`` watches nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd import folder_lock, limits
from syncd.events import Intake
from syncd.folder_probe import probe
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver, ObservedWatch

    from syncd.config import FolderConfig
    from syncd.safe_watch import PolledFolders, SafeInotifyObserver

log = logging.getLogger(__name__)

__all__ = ["FolderWatch", "Intake", "Watcher"]


@dataclass
class FolderWatch:
    folder: FolderConfig
    watch: ObservedWatch | None = None
    observer: BaseObserver | None = None
    inode: int | None = None
    device: int | None = None  # st_dev when first armed: a change means "unmounted"
    mode: str = "none"  # native | polling | none
    problem: str | None = None
    fallback: str | None = None  # why a native folder is polled (inotify limits)
    polled: str | None = None  # polled from now on: the watch limit was reached while watched
    lock: socket.socket | None = None  # the folder's lock (folder_lock.py)
    lock_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder it locks


class Watcher:
    """Schedules and re-arms watches; see the module docstring."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._native: SafeInotifyObserver | None = None
        self._polling: dict[float, BaseObserver] = {}
        self._polled: PolledFolders | None = None  # the folders polling observers may look beneath
        self.folders: dict[str, FolderWatch] = {}
        self._lock = threading.Lock()
        self.shortages = limits.Shortages()  # the uploader's (daemon.py): said once for all

    # observers -----------------------------------------------------------

    def _native_observer(self) -> BaseObserver:
        if self._native is None:
            from syncd.safe_watch import SafeInotifyObserver

            self._native = SafeInotifyObserver()
            self._native.daemon = True
            self._native.start()
        return self._native

    def _polling_observer(self, interval: float, root: str) -> BaseObserver:
        from watchdog.observers.polling import PollingObserverVFS

        from syncd.safe_watch import PolledFolders

        if self._polled is None:
            self._polled = PolledFolders()
        self._polled.add(root)
        obs = self._polling.get(interval)
        if obs is None:
            # stat and listing beneath the polled folder, refusing a symlink at any component:
            # a polled folder never descends through a link (safe_watch.py)
            obs = PollingObserverVFS(
                stat=self._polled.lstat, listdir=self._polled.listdir, polling_interval=interval
            )
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
            kept = {}  # a folder whose settings changed keeps its lock: no other syncd slips in
            for root in list(self.folders):
                if root not in wanted or self.folders[root].folder != wanted[root]:
                    old = self.folders.pop(root)
                    if root in wanted and old.lock is not None:
                        kept[root], old.lock = (old.lock, old.lock_id), None
                    self._release(old)
            for root, folder in wanted.items():
                fw = self.folders.get(root)
                if fw is None:
                    fw = FolderWatch(folder)
                    fw.lock, fw.lock_id = kept.pop(root, (None, None))
                    self.folders[root] = fw
                elif fw.problem is None or not fw.problem.startswith("on another device"):
                    continue
                else:
                    # A reload accepts the device the folder is on now (moved on purpose).
                    log.info("reload: accepting the current device of %s", quoted_path(root))
                    fw.device = None
                if self._arm(fw):
                    armed.append(root)
        return armed

    def problem(self, root: str) -> str | None:
        """The current problem of a watched folder, checked now (None: usable)."""
        with self._lock:
            fw = self.folders.get(root)
        if fw is None:
            return "not watched"
        problem = probe(fw.folder, fw.device)[0]
        if problem is None and fw.lock is None and (fw.problem or "").startswith(folder_lock.HELD):
            return fw.problem  # until a health check takes the lock
        return problem

    def _arm(self, fw: FolderWatch) -> bool:
        """Watch ``fw`` if it is usable; False (with ``fw.problem`` set) if not."""
        root = os.fspath(fw.folder.path)
        problem, st = probe(fw.folder, fw.device)
        if problem is not None:
            self._report(fw, problem)
            return False
        assert st is not None
        if not os.access(root, os.R_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            # (the kernel's answer, ACLs included: the mode bits alone would refuse an inbox
            # its producer owns and shares with syncd through setfacl)
            self._report(fw, "cannot watch (Permission denied: syncd's user may not list it)")
            return False
        if fw.lock is not None and fw.lock_id != (st.st_dev, st.st_ino):
            folder_lock.release(fw.lock)  # a lock kept across a reload, of a folder replaced since
            fw.lock = None
        if fw.lock is None:
            fw.lock, problem = folder_lock.take(st, fw.problem)
            if problem is not None:
                self._report(fw, problem)
                return False
            fw.lock_id = (st.st_dev, st.st_ino)
        from syncd.event_handler import EVENT_FILTER, _Handler
        from syncd.safe_watch import inotify_watches, ran_short

        handler = _Handler(fw.folder, self.intake)
        mode = "polling" if fw.folder.observer == "polling" or fw.polled else "native"
        fallback = fw.polled
        try:
            if mode == "native":
                fw.observer = self._native_observer()
            else:
                fw.observer = self._polling_observer(fw.folder.poll_seconds, root)
            before = inotify_watches() if mode == "native" and fw.folder.recursive else None
            fw.watch = fw.observer.schedule(
                handler, root, recursive=fw.folder.recursive, event_filter=EVENT_FILTER
            )
            if before is not None:
                self._check_watch_count(fw, root, before)
        except OSError as exc:
            if (short := ran_short(exc)) is not None:  # not inotify's limit: tried again soon
                self.shortages.note(limits.DESCRIPTORS, exc)
                self._report(fw, f"cannot watch ({exc.strerror}: {short})")
                return False
            if mode == "native" and exc.errno in (errno.ENOSPC, errno.EMFILE):
                sysctl = (
                    "fs.inotify.max_user_watches"
                    if exc.errno == errno.ENOSPC
                    else "fs.inotify.max_user_instances"
                )
                log.warning(
                    "inotify limit reached for %s (%s); falling back to polling every "
                    "%gs. Raise sysctl %s to watch it natively.",
                    quoted_path(root),
                    exc.strerror,
                    fw.folder.poll_seconds,
                    sysctl,
                )
                mode, fallback = "polling", f"polled, inotify limit reached (raise {sysctl})"
                fw.observer = self._polling_observer(fw.folder.poll_seconds, root)
                try:
                    fw.watch = fw.observer.schedule(
                        handler, root, recursive=fw.folder.recursive, event_filter=EVENT_FILTER
                    )
                except OSError as again:
                    self._report(fw, f"cannot watch ({again.strerror or again})")
                    return False
            else:
                self._report(fw, f"cannot watch ({exc.strerror or exc})")
                return False
        except Exception as exc:  # watchdog's own failure: the folder is reported, others go on
            if limits.shortage(exc) is None:  # (no thread for its emitter: said as the problem)
                log.exception("cannot watch %s", quoted_path(root))
            self._report(fw, f"cannot watch ({type(exc).__name__}: {exc})")
            return False
        if fw.problem is not None:
            log.warning(
                "watched folder %s is usable again (was: %s); watching and rescanning it",
                quoted_path(root),
                fw.problem,
            )
        if fw.device is None:
            fw.device = st.st_dev
        fw.mode, fw.inode, fw.problem, fw.fallback = mode, st.st_ino, None, fallback
        log.info("watching %s (%s%s)", quoted_path(root), mode, ", recursive" if fw.folder.recursive else "")
        return True

    def _check_watch_count(self, fw: FolderWatch, root: str, before: int) -> None:
        """Raise ENOSPC if the kernel gave fewer watches than the tree has directories
        (:func:`syncd.safe_watch.missing_watches`)."""
        from syncd.safe_watch import missing_watches

        missing = missing_watches(root, before)
        if missing is None:
            return
        assert fw.observer is not None and fw.watch is not None
        with contextlib.suppress(KeyError, OSError, ValueError):
            fw.observer.unschedule(fw.watch)
        fw.watch = None
        raise OSError(errno.ENOSPC, missing)

    def _poll_from_now(self, fw: FolderWatch, root: str, hit: OSError) -> None:
        """A sub-directory got no watch (the kernel's limit reached once the folder was
        watched: the kernel says nothing more): the folder is polled from now on, said once;
        its watches are given back (to other folders) and it is rescanned."""
        sysctl = "fs.inotify.max_user_watches"
        log.warning(
            "inotify limit reached in %s (a new sub-folder got no watch: %s); polling it every "
            "%gs from now on. Raise sysctl %s and restart to watch it natively.",
            quoted_path(root),
            hit.strerror or hit,
            fw.folder.poll_seconds,
            sysctl,
        )
        fw.polled = f"polled, inotify limit reached (raise {sysctl})"
        self._unwatch(fw)

    def _still_short(self, root: str, short: OSError) -> bool:
        """A new sub-folder got no watch: syncd was out of descriptors to open or list it
        (said once, limits.py). True while it still is (the folder stays watched as it is,
        its files found by the rescans); then False, said: the folder is watched again."""
        self.shortages.note(limits.DESCRIPTORS, short)
        if limits.out_of_descriptors():
            return True
        log.warning(
            "watching %s again and rescanning it: a new sub-folder got no watch (%s)",
            quoted_path(root),
            short.strerror or short,
        )
        return False

    def _unwatch(self, fw: FolderWatch) -> None:
        """Give up ``fw``'s watch, to watch it again; its lock is kept (no other syncd slips in)."""
        assert fw.observer is not None and fw.watch is not None
        with contextlib.suppress(KeyError, OSError, ValueError):
            fw.observer.unschedule(fw.watch)
        fw.watch, fw.observer, fw.mode = None, None, "none"

    def _report(self, fw: FolderWatch, problem: str) -> None:
        """Release ``fw`` and log ``problem`` once (again only when it changes)."""
        self._release(fw)
        if problem != fw.problem:
            log.error(
                "watched folder %s is not available (%s): not watching or scanning it, "
                "its files are not treated as gone; checking again every few seconds",
                quoted_path(os.fspath(fw.folder.path)),
                problem,
            )
        fw.problem = problem

    def _release(self, fw: FolderWatch) -> None:
        if fw.mode == "polling" and self._polled is not None:
            self._polled.discard(os.fspath(fw.folder.path))
        if fw.observer is not None and fw.watch is not None:
            try:
                fw.observer.unschedule(fw.watch)
            except (KeyError, OSError, ValueError):
                pass
        fw.watch, fw.observer, fw.mode = None, None, "none"
        folder_lock.release(fw.lock)
        fw.lock = None

    def _replace_dead_reader(self) -> None:
        """The one thread that reads every native folder's events died (a bug in it): each
        native folder is released, to be armed again on a new observer and rescanned."""
        native = self._native
        if native is None or native.reader_alive():
            return
        log.error("the inotify reader stopped; watching the native folders again with a new one")
        self._native = None
        for fw in self.folders.values():
            if fw.observer is native:
                self._release(fw)
        with contextlib.suppress(Exception):
            native.stop()

    def check_health(self) -> list[str]:
        """Re-check every folder; returns the roots that were (re)armed and need a rescan."""
        from syncd.safe_watch import emitter_alive

        rearmed = []
        with self._lock:
            self._replace_dead_reader()
            for root, fw in self.folders.items():
                problem, st = probe(fw.folder, fw.device)
                if problem is not None:
                    self._report(fw, problem)
                    continue
                assert st is not None
                alive = fw.observer is None or (
                    fw.observer.is_alive() and emitter_alive(fw.observer, fw.watch)
                )
                if fw.mode != "none" and st.st_ino == fw.inode and fw.watch is not None and alive:
                    native = self._native if fw.observer is self._native else None
                    hit = native.limit_hit(fw.watch) if native is not None else None
                    short = native.short(fw.watch) if native is not None else None
                    if hit is None and (short is None or self._still_short(root, short)):
                        folder_lock.drain(fw.lock)
                        continue
                    if hit is not None:
                        self._poll_from_now(fw, root, hit)
                    else:
                        self._unwatch(fw)  # watched again (below) and rescanned
                elif fw.mode != "none":
                    log.warning(
                        "watched folder %s was replaced (deleted and created again); watching the new one",
                        quoted_path(root),
                    )
                    self._release(fw)
                if self._arm(fw):
                    rearmed.append(root)
        return rearmed

    def problems(self) -> dict[str, str]:
        """Folders that are not usable now, with why (as of the last check)."""
        return {root: fw.problem for root, fw in self.folders.items() if fw.problem}

    def fallbacks(self) -> dict[str, str]:
        """Folders polled because inotify limits were reached."""
        return {root: fw.fallback for root, fw in self.folders.items() if fw.fallback}

    def stop(self) -> None:
        observers = ([self._native] if self._native else []) + list(self._polling.values())
        for obs in observers:
            obs.stop()
        for obs in observers:
            obs.join(timeout=5)
        self._native = None
        self._polling.clear()
        for fw in self.folders.values():
            folder_lock.release(fw.lock)
            fw.lock = None
        self.folders.clear()
