"""inotify watches that never leave the watched folder, whatever a producer renames.

watchdog's recursive inotify observer adds a watch for every directory it
finds by *path*: ``os.walk`` of a new directory's path, then
``inotify_add_watch`` of each sub-directory's path. A producer who creates a
directory and swaps it for a symlink (``mkdir x; mv x .old; ln -s / x``)
between the event and the walk makes it walk the link's target: one watch
for every directory of the host (47,887 watches and 510 MB in a test),
events for paths syncd was never given, and a watch limit used up for
everyone. A tree deeper than Python's recursion limit stopped the observer
(``RecursionError``).

:class:`SafeInotifyObserver` is watchdog's observer with those three steps
replaced (:class:`SafeWatchGroup`): every directory is opened with
:mod:`syncd.safefs` beneath the folder, refusing a symlink at any component,
and the watch is added on that open descriptor (``/proc/self/fd/N``), so it
is the directory that was checked and no other; the walks are
:func:`syncd.safefs.walk` (from descriptors, no symlink entered, bounded in
depth and entries like the scans). Everything else (events, moves, the
queue overflow) is watchdog's own. The watched folder itself is followed as
configured: it is the operator's path.

The polling observer (network shares) lists and stats by path too, and
follows a symlink at any component but the last: a directory swapped for a
link to ``/`` between two polls had it walk the host at every poll, a core
busy and 620 MB in a test. :class:`PolledFolders` gives it ``stat`` and
``listdir`` that resolve every path beneath its polled folder, refusing a
symlink at any component (a refused path reads as gone), and list nothing
deeper than the scans go (its walk recurses).

syncd out of descriptors (EMFILE, ENFILE) for a look a watch needs (opening a
directory, walking the tree, counting its watches) raises
:class:`OutOfDescriptors` while a folder is armed: the attempt ends as syncd's
own shortage (syncd/limits.py), to be tried again, never as a directory gone
nor as inotify's limit, which would poll the folder for good.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator

from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import (
    _INVALID_WD,
    InotifyEmitter,
    InotifyObserver,
    InotifyWatchGroup,
)
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, Mask

from syncd import limits, safefs

log = logging.getLogger(__name__)

_DIR = os.O_PATH | os.O_DIRECTORY


class OutOfDescriptors(OSError):
    """syncd had no descriptor (EMFILE, ENFILE) for a look a watch needs: its own
    shortage (syncd/limits.py), not inotify's limit nor a directory gone."""


@contextlib.contextmanager
def _shortage_raised() -> Iterator[None]:
    """An EMFILE or ENFILE inside comes out as :class:`OutOfDescriptors`."""
    try:
        yield
    except OutOfDescriptors:
        raise
    except OSError as exc:
        if exc.errno not in safefs.SHORT:
            raise
        raise OutOfDescriptors(exc.errno, exc.strerror, exc.filename) from exc


class SafeWatchGroup(InotifyWatchGroup):
    """watchdog's watches of one folder, each added on a directory opened beneath it.

    A sub-directory that gets no watch because the kernel's limit is reached (a new
    one, once the folder is watched) is recorded in :attr:`limit_hit`, not logged:
    the watcher then polls the whole folder and says so once (syncd/watcher.py). One that
    gets no watch because syncd is out of descriptors to open or list it is recorded in
    :attr:`short`: the watcher watches the folder again once descriptors are free, and
    rescans it (a shortage passes; polling would last)."""

    limit_hit: OSError | None = None
    short: OSError | None = None

    def _relative(self, path: bytes) -> str | None:
        """``path`` relative to the watched folder ("" for the folder); None if not under it."""
        root = os.path.normpath(self.path)
        norm = os.path.normpath(path)
        if norm == root:
            return ""
        prefix = root + b"/"
        return os.fsdecode(norm[len(prefix) :]) if norm.startswith(prefix) else None

    def _open_dir(self, path: bytes) -> int:
        """A descriptor of the directory at ``path``: beneath the folder, no symlink on the way."""
        rel = self._relative(path)
        if rel is None:
            raise safefs.UnsafePath(os.fsdecode(path), "not under the watched folder")
        with _shortage_raised():
            rootfd = safefs.open_root(os.fsdecode(self.path), _DIR)
            try:
                return rootfd if not rel else safefs.open_beneath(rootfd, rel, _DIR)
            finally:
                if rel:
                    os.close(rootfd)

    def _add_callback(self, path: bytes) -> None:
        if (existing := self._find_node_by_path(path)) is not None and existing.wd != _INVALID_WD:
            return
        try:
            fd = self._open_dir(path)
        except OutOfDescriptors as e:
            if path == self.path or not self.is_active:
                raise  # arming the folder: tried again (not a sub-directory gone)
            self._short(path, e)
            return
        except OSError:
            if path == self.path:
                raise
            return  # gone, no longer a directory, or a symlink now: not watched, not followed
        try:
            # the descriptor's magic link is followed to exactly the directory opened
            mask = Mask((self.event_mask & ~InotifyConstants.IN_DONT_FOLLOW) | InotifyConstants.IN_ONLYDIR)
            wd = self._inotify_fd.add_callback(f"/proc/self/fd/{fd}".encode(), mask, self._callback, self._id)
            if self._insert_node(path, wd) is None:
                self._inotify_fd.remove_callbacks([(wd, self._id)])
        except OSError as e:
            if path == self.path:
                raise
            if e.errno in {errno.ENOSPC, errno.EMFILE}:
                if not self.is_active:
                    raise
                log.debug("cannot watch %r: %s", os.fsdecode(path), e.strerror or e)
                self.limit_hit = self.limit_hit or e
        finally:
            os.close(fd)

    def _short(self, path: bytes, exc: OutOfDescriptors) -> None:
        """A new directory at ``path`` got no watch (or was not listed) for want of a descriptor."""
        log.debug("cannot watch %r: %s", os.fsdecode(path), exc.strerror or exc)
        self.short = self.short or exc

    def _subdirectories(self, path: bytes) -> list[tuple[bytes, bool]]:
        """Every entry below ``path`` as ``(its path, is a directory)``, parents first;
        :class:`OutOfDescriptors` when a directory could not be listed for want of one."""
        rel = self._relative(path)
        if rel is None:
            return []
        depth = len(rel.split("/")) if rel else 0
        found = []
        root, max_depth = os.fsdecode(self.path), safefs.MAX_DEPTH - depth
        with _shortage_raised():
            for entry in safefs.walk(root, start=rel, max_depth=max_depth, shortage_raises=True):
                full = os.path.join(self.path, os.fsencode(entry.relpath))
                found.append((full, stat.S_ISDIR(entry.stat.st_mode)))
        return found

    def _add_all_callbacks(self, path: bytes) -> None:
        try:
            self._add_callback(path)
            if self.is_recursive:
                for sub, is_dir in self._subdirectories(path):
                    if is_dir:
                        self._add_callback(sub)
        except OutOfDescriptors as e:
            if not self.is_active:
                raise  # arming the folder: tried again
            self._short(path, e)

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        """Create events for what a new directory held before its watch existed."""
        events = []
        try:
            found = self._subdirectories(src_path)
        except OutOfDescriptors as e:
            self._short(src_path, e)  # (the rescan that follows the new watch finds them)
            return []
        for sub, is_dir in found:
            parent, name = os.path.split(sub)
            node = self._find_node_by_path(parent)
            if node is None:  # not watched (yet): its own IN_CREATE will report its contents
                continue
            mask = InotifyConstants.IN_CREATE | (InotifyConstants.IN_ISDIR if is_dir else 0)
            events.append(InotifyEvent(node.wd, Mask(mask), 0, name))
        return events


class SafeInotifyEmitter(InotifyEmitter):
    """watchdog's inotify emitter, with :class:`SafeWatchGroup` watches."""

    def on_thread_start(self) -> None:
        self._inotify = SafeWatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=False,
        )


class SafeInotifyObserver(InotifyObserver):
    """watchdog's inotify observer; its watches stay beneath each watched folder."""

    def __init__(self) -> None:
        super().__init__()
        self._emitter_class = SafeInotifyEmitter

    def limit_hit(self, watch: ObservedWatch) -> OSError | None:
        """The error of a sub-directory of ``watch`` that got no watch (the kernel's
        limit reached once it was watched), or None."""
        group = getattr(self._emitter_for_watch.get(watch), "_inotify", None)
        return group.limit_hit if isinstance(group, SafeWatchGroup) else None

    def short(self, watch: ObservedWatch) -> OSError | None:
        """The error of a new sub-directory of ``watch`` that got no watch because syncd
        was out of descriptors to open or list it, or None."""
        group = getattr(self._emitter_for_watch.get(watch), "_inotify", None)
        return group.short if isinstance(group, SafeWatchGroup) else None

    def reader_alive(self) -> bool:
        """Whether the thread reading the kernel's events for every watch still runs."""
        reader = self._inotify_fd
        return reader is None or reader.is_alive()


def emitter_alive(observer: BaseObserver, watch: ObservedWatch | None) -> bool:
    """Whether the thread that reads ``watch``'s events still runs. watchdog stops it
    when the folder itself is deleted; a folder created again at once often gets the
    same inode number, so only this tells that its watch is gone."""
    emitters = getattr(observer, "_emitter_for_watch", None)
    if not isinstance(emitters, dict):
        return True  # another watchdog: the inode check alone
    emitter = emitters.get(watch)
    return emitter is not None and emitter.is_alive()


class PolledFolders:
    """``stat`` and ``listdir`` for watchdog's polling observer, beneath the polled folders."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: set[str] = set()

    def add(self, root: str) -> None:
        with self._lock:
            self._roots.add(os.path.normpath(root))

    def discard(self, root: str) -> None:
        with self._lock:
            self._roots.discard(os.path.normpath(root))

    def _split(self, path: str) -> tuple[str, str]:
        """``(polled folder, path relative to it)``; ENOENT for a path under none of them."""
        norm = os.path.normpath(path)
        with self._lock:
            roots = sorted(self._roots, key=len, reverse=True)
        for root in roots:
            if norm == root:
                return root, ""
            if norm.startswith(root.rstrip("/") + "/"):
                return root, norm[len(root.rstrip("/")) + 1 :]
        raise FileNotFoundError(errno.ENOENT, "not under a polled folder", path)

    def lstat(self, path: str) -> os.stat_result:
        root, rel = self._split(path)
        if not rel:
            return os.stat(root)  # the folder itself: the operator's path, followed as given
        try:
            return safefs.lstat(root, rel)
        except safefs.UnsafePath:
            raise FileNotFoundError(errno.ENOENT, "a symlink on the way", path) from None

    def listdir(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        root, rel = self._split(path or ".")
        if rel and len(rel.split("/")) >= safefs.MAX_DEPTH:
            return iter([])  # as deep as the scans go
        if not rel:
            fd = safefs.open_root(root, safefs.READ_DIR_FLAGS & ~os.O_NOFOLLOW)
        else:
            rootfd = safefs.open_root(root)
            try:
                fd = safefs.open_beneath(rootfd, rel, safefs.READ_DIR_FLAGS)
            except safefs.UnsafePath:
                raise FileNotFoundError(errno.ENOENT, "a symlink on the way", path) from None
            finally:
                os.close(rootfd)
        try:
            with os.scandir(fd) as it:
                return iter(list(it))
        finally:
            os.close(fd)


def inotify_watches() -> int | None:
    """How many inotify watches this process holds (from /proc/self/fdinfo), or None;
    :class:`OutOfDescriptors` when syncd had none to read them (not a count of too few)."""
    total = 0
    with _shortage_raised():
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError as exc:
            if exc.errno in safefs.SHORT:
                raise
            return None
        for fd in fds:
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
            except OSError as exc:
                if exc.errno in safefs.SHORT:
                    raise
                continue
    return total


def ran_short(exc: OSError) -> str | None:
    """What ran out, for the folder's problem, when arming its watch failed with ``exc``
    for want of syncd's own descriptors; None for anything else. (inotify's instance limit
    is EMFILE too: one not raised as :class:`OutOfDescriptors` is syncd's only when it
    holds as many descriptors as it may.)"""
    own = isinstance(exc, OutOfDescriptors) or (exc.errno == errno.EMFILE and limits.out_of_descriptors())
    if not own:
        return None
    if exc.errno == errno.ENFILE:
        return "the system is out of file descriptors, sysctl fs.file-max"
    return f"syncd is out of file descriptors, LimitNOFILE= {limits.nofile()[0]}"


def missing_watches(root: str, before: int) -> str | None:
    """Whether the kernel gave a tree just watched fewer watches than it has directories
    (``before``: this process's watches before): ``"only X of Y directories got a watch"``,
    or None. watchdog ignores a failed watch on a sub-directory (the watch limit reached
    half-way through a tree); the kernel's own count of this process's watches tells. A
    directory created meanwhile is allowed for. :class:`OutOfDescriptors` when a count
    could not be made for want of a descriptor."""
    after = inotify_watches()
    if after is None:
        return None
    added, dirs = after - before, count_dirs(root)
    if added >= dirs or added >= count_dirs(root):
        return None
    return f"only {added} of {dirs} directories got a watch"


def count_dirs(root: str) -> int:
    """The directories of a tree that can get an inotify watch (symlinks not followed).

    inotify needs read access to a directory; one a producer made unreadable
    (mode 000) gets no watch from anyone, and its files are found by the
    rescans. It must not count as a missing watch, or one such directory
    would push the whole folder to polling. One syncd had no descriptor to list raises
    :class:`OutOfDescriptors`: it is not a directory fewer.
    """
    count = 1
    with _shortage_raised():
        for entry in safefs.walk(root, descend=lambda _rel, st: listable(st), shortage_raises=True):
            if stat.S_ISDIR(entry.stat.st_mode) and listable(entry.stat):
                count += 1
    return count


def listable(st: os.stat_result) -> bool:
    """Whether this process may read a directory with this stat (owner/group/other bits)."""
    if os.geteuid() == 0:
        return True
    if st.st_uid == os.geteuid():
        bits = stat.S_IRUSR | stat.S_IXUSR
        return st.st_mode & bits == bits
    if st.st_gid in (os.getegid(), *os.getgroups()):
        bits = stat.S_IRGRP | stat.S_IXGRP
        return st.st_mode & bits == bits
    bits = stat.S_IROTH | stat.S_IXOTH
    return st.st_mode & bits == bits
