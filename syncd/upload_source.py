"""The local side of one upload: the file opened for sending, and finding it again.

:class:`StoppableSource` is the :class:`~syncd.destinations.base.Source` the
uploader hands to a destination: its reads stop when syncd is stopping and
wait for the destination's bandwidth limit. The helpers find a file's
trusted folder (:func:`source_root`), a file renamed during its upload
(:func:`find_inode`, by device and inode; :func:`follow_move` records where
it went), a retried failed file as it is now (:func:`adopt_failed`) and
whether a name is taken (:func:`lexists`), all through :mod:`syncd.safefs`,
never through a symlink.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from syncd import left_sidecars, limits, moves, safefs
from syncd.bandwidth import Throttle
from syncd.destinations.base import READ_BLOCK, Source
from syncd.ledger import Ledger, Row, Stat
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name


class UploadCancelled(Exception):
    """Raised inside an upload when syncd is stopping and the drain time is up."""


class StoppableSource(Source):
    """A Source whose reads fail with UploadCancelled once ``stop`` is set.

    Uploads stream their bodies from the Source, so a cancelled upload stops
    at its next block (1 MiB) instead of running to the end of the part.
    With a ``throttle`` (the destination's bandwidth limit, :mod:`syncd.bandwidth`)
    every block waits for its turn before it is handed on to be sent.
    ``on_read`` is called after every block read (the worker's heartbeat,
    :mod:`syncd.liveness`).
    """

    def __init__(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        inode: int,
        device: int | None,
        root: str | None,
        stop: threading.Event,
        throttle: Throttle | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            path, size=size, mtime_ns=mtime_ns, inode=inode, device=device, root=root, on_read=on_read
        )
        self._stop_event = stop
        self._throttle = throttle

    def iter_range(self, offset: int, length: int, block: int = READ_BLOCK) -> Iterator[bytes]:
        if self._stop_event.is_set():
            raise UploadCancelled("syncd is stopping")
        throttle = self._throttle
        if throttle is not None:
            block = min(block, throttle.block)
        for data in super().iter_range(offset, length, block):
            if throttle is not None:
                throttle(len(data))  # returns at once when stopping
            if self._stop_event.is_set():
                raise UploadCancelled("syncd is stopping")
            yield data


WALK_SECONDS = 60.0  # the longest find_inode walks a folder for one file


def find_inode(
    root: str,
    inode: int | None,
    device: int | None,
    old_path: str,
    version: tuple[int | None, int | None] = (None, None),
) -> str | None:
    """The path of the regular file with this device and inode under ``root``, and the
    ``version`` (size, mtime_ns) given: a rename keeps both, while a new file that got a
    freed inode number (the uploaded one deleted while syncd was down) is another file.

    Without a recorded device (rows from before it was recorded), the
    folder's own device is assumed. The walk gives up after :data:`WALK_SECONDS` (a
    folder of millions of files on a slow share), as if the file were gone: the worker or
    archiver walking must not look wedged to the watchdog, and a file not found is at
    worst uploaded again under its new name.
    """
    size, mtime_ns = version
    if device is None:
        try:
            device = os.stat(root).st_dev
        except OSError:
            return None
    deadline = time.monotonic() + WALK_SECONDS
    for seen, entry in enumerate(safefs.walk(root, shortage_raises=True)):
        if seen % 256 == 0 and time.monotonic() > deadline:
            log.warning(
                "gave up looking for a renamed file in %s after %gs (%d entries)",
                quoted_path(root),
                WALK_SECONDS,
                seen,
            )
            return None
        st = entry.stat
        path = os.path.join(root, entry.relpath)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (device, inode) or path == old_path:
            continue
        if size in (None, st.st_size) and mtime_ns in (None, st.st_mtime_ns):
            return path
    return None


def follow_move(
    ledger: Ledger, row: Row, folder: FolderConfig, reason: str, shortages: limits.Shortages | None = None
) -> bool | None:
    """The upload stands but the file left its path: find where it went.

    Renamed inside the folder: the archive takes it from its new path
    (under its original name) and the row the watcher made for the new
    path is retired, so the same bytes are not uploaded twice. Gone, or
    replaced by a new file: nothing to archive; a new file at the path is
    a new version with its own row. None: syncd out of descriptors to look
    (said to ``shortages``); the row stays ``uploaded`` and the sweep looks again.
    """
    try:
        if row.location is None and relocate(ledger, row, folder):
            return True
    except OSError as exc:
        if shortages is None or (kind := limits.shortage(exc)) is None:
            raise
        shortages.note(kind, exc)
        return None
    note = f"{reason.removeprefix('the file was ')}; nothing archived"
    ledger.mark_done(row.id, note=note)
    left_sidecars.note(ledger, row, folder)  # the one read for it, if its producer left it
    if row.location is None and lexists(row.folder, row.relpath):
        # a new file took the name: a new version with its own row
        ledger.observe(
            row.folder,
            [row.relpath],
            destination=row.destination,
            labels=row.labels,
            category=row.category,
        )
    log.info("uploaded %s, which was %s", quoted_path(row.inbox_path), note)
    return False


def relocate(ledger: Ledger, row: Row, folder: FolderConfig) -> bool:
    """Whether the uploaded file of ``row``, no longer at its inbox path, was found renamed
    within its folder (by device and inode, a walk of the folder): its new path is then
    recorded, and the row the watcher made for that path is retired."""
    found = find_inode(
        os.fspath(folder.path), row.inode, row.device, row.current_path, (row.size, row.mtime_ns)
    )
    if found is None:
        return False
    relpath = os.path.relpath(found, os.fspath(folder.path))
    twin = ledger.active_for_path(os.fspath(folder.path), relpath)
    if (
        twin is not None
        and twin.inode in (None, row.inode)
        and row.queued_at is not None
        and twin.first_seen < row.queued_at
    ):
        # a name this inode had before the file was queued: a second name (a hard link)
        # with a row of its own, not where this one was renamed to
        return False
    ledger.set_location(row.id, found)
    if twin is not None and twin.inode in (None, row.inode):
        ledger.forget(twin.id, queued=True)  # the same bytes: archived (or kept) from there
    log.info(
        "%s was renamed to %s during upload; %s",
        quoted_path(row.inbox_path),
        quoted_path(found),
        {"keep": "it is kept there", "delete": "deleting it from there"}.get(
            folder.after_upload, "archiving it from there"
        ),
    )
    return True


def source_root(path: str, folder: FolderConfig) -> str | None:
    """The trusted folder ``path`` lies under (inbox, failed_dir, archive_dir), if any."""
    try:
        return safefs.anchor(path, [os.fspath(folder.path), *moves.roots_of(folder)])[0]
    except safefs.UnsafePath:
        return None


def failed_file_now(row: Row, folder: FolderConfig) -> Stat | None:
    """A failed file that ``syncd retry`` queued again is sent as it is now in failed_dir:
    its stat there when it differs from the row's, else None.

    The move there may have been a copy (failed_dir on another file system, a
    second hard link, a link the kernel refused), which is another inode, and
    the operator may have mended the file before the retry (or between two
    attempts): either was taken for a file replaced during its upload, and the
    row ended "vanished" with the file left in failed_dir for good.
    """
    if row.location is None or folder.failed_dir is None:
        return None
    try:
        root, rel = safefs.anchor(row.location, [os.fspath(folder.failed_dir)])
        st = safefs.lstat(root, rel)
    except (OSError, safefs.UnsafePath):
        return None  # not in failed_dir (renamed in the inbox during an upload), or gone
    now = Stat(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)
    same = (row.size, row.mtime_ns, row.inode, row.device) == (now.size, now.mtime_ns, now.inode, now.device)
    return None if same or not stat.S_ISREG(st.st_mode) else now


def adopt_failed(ledger: Ledger, row: Row, folder: FolderConfig, abort: Callable[[Row], None]) -> Row:
    """``row`` as its file is now in failed_dir (:func:`failed_file_now`), sent from the
    start: what the service holds of an earlier attempt (``abort``) is of other bytes."""
    now = failed_file_now(row, folder)
    if now is None:
        return row
    abort(row)
    ledger.adopt(row.id, now)
    return replace(row, size=now.size, mtime_ns=now.mtime_ns, inode=now.inode, device=now.device, resume=None)


def lexists(root: str, relpath: str) -> bool:
    """Whether something is at ``root/relpath``, found without following symlinks (syncd
    out of descriptors to look: cannot tell, so not taken for gone)."""
    try:
        safefs.lstat(root, relpath)
        return True
    except OSError as exc:
        return exc.errno in safefs.SHORT


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"
