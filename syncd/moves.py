"""Moving a file's bytes to a new name without leaving the trusted folders.

The primitives :mod:`syncd.archive` and :mod:`syncd.failed` share. Every
name is resolved through :mod:`syncd.safefs`: from a descriptor of the
watched folder, the archive_dir or the failed_dir, never through a symlink
at any component, so a producer who swaps a directory for a link cannot
make syncd move, copy or write anything outside those folders. The bytes
that reach the target are those of the *descriptor that was uploaded* (or,
after a crash, of the file whose device, inode, size and mtime match the
ledger):

* same filesystem, one link: ``linkat`` of the open descriptor (through
  ``/proc/self/fd``) to the target name, which fails rather than clobber;
* otherwise (another filesystem, ``fs.protected_hardlinks`` refusing a link
  to a producer's file, or a file with a second hard link that its producer
  could still write through): a copy *from the descriptor* to a temp name
  created ``O_EXCL`` in the target directory, hashed while copied and
  compared with the SHA-256 that was uploaded, fsynced, then linked into
  place;
* the source name is unlinked only while it still names that same file
  (device and inode); directories are fsynced after every name change.

A file still linked elsewhere after its source name is gone (a producer made
a hard link at the last moment) gets its target entry replaced by a private
copy, so nothing a producer keeps can change an archived file.

Target names never clobber: a taken name gets a `` (1)`` style suffix, the
next number after those in use, found in a few lookups however many there
are (:func:`free_names`).
Directories created here are mode 0700.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from syncd import crashpoints, safefs
from syncd.aside import aside_prefix, put_back
from syncd.ledger import Row
from syncd.logs import quoted_path
from syncd.names import free_names
from syncd.rules import OWN_PREFIXES

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)

TEMP_PREFIX = OWN_PREFIXES[1]  # a copy being made: never ledgered (rules.judge)
DIR_MODE = 0o700
COPY_BLOCK = 1 << 20
# link(2) errors after which the bytes are copied instead
_COPY_INSTEAD = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.ENOENT, errno.EACCES)


class ChangedAfterUpload(Exception):
    """The file's bytes are no longer the ones uploaded (written to since the upload)."""


def roots_of(folder: FolderConfig) -> list[str | None]:
    """A folder's failed_dir and archive_dir: where its rows' bytes may sit besides the inbox."""
    return [_fs(folder.failed_dir), _fs(getattr(folder, "archive_dir", None))]


def roots(row: Row, folder: FolderConfig) -> list[str | None]:
    """The trusted roots a row's bytes may sit under, most likely first."""
    return [row.folder, *roots_of(folder)]


def _fs(path: Any) -> str | None:
    return None if path is None else os.fspath(path)


class Held:
    """The file a row's bytes are in: its directory descriptor, name, descriptor and stat."""

    def __init__(self, dirfd: int, name: str, fd: int, st: os.stat_result, path: str) -> None:
        self.dirfd, self.name, self.fd, self.st, self.path = dirfd, name, fd, st, path
        self.replaced = False  # unlink found another file under the name (left alone)

    def written_since(self) -> bool:
        """Whether the file was written to since it was held (size or mtime moved): then
        the name holds bytes that were not uploaded, and must not be removed."""
        st = os.fstat(self.fd)
        return (st.st_size, st.st_mtime_ns) != (self.st.st_size, self.st.st_mtime_ns)

    def still_named(self) -> bool:
        """Whether the source name still leads to the file we hold."""
        try:
            return safefs.same_file(os.stat(self.name, dir_fd=self.dirfd, follow_symlinks=False), self.st)
        except OSError:
            return False

    def unlink(self) -> bool:
        """Remove the source name if it still names our file; False (left alone) if not.

        A look at the name and then an unlink would remove a new file that took the
        name in between (an editor's or a producer's "write a temp file, rename it
        over"): the name is first renamed aside, to a name of syncd's own, and what
        was renamed is looked at there. Not our file: it is put back under its name
        (or, should that be taken again by now, under a free ``name (N)``).
        """
        if not self.still_named():
            return self._left_in_place()
        aside = aside_prefix(self.st.st_dev, self.st.st_ino) + uuid.uuid4().hex[:12]
        try:
            os.rename(self.name, aside, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        except FileNotFoundError:
            return self._left_in_place()  # removed in between: nothing is under the name
        crashpoints.point("archive.renamed_aside")
        try:
            ours = safefs.same_file(os.stat(aside, dir_fd=self.dirfd, follow_symlinks=False), self.st)
        except OSError:
            ours = False
        if not ours:
            put_back(self.dirfd, aside, self.name, self.path)
            return self._left_in_place()
        os.unlink(aside, dir_fd=self.dirfd)
        safefs.fsync_dirfd(self.dirfd)
        crashpoints.point("archive.unlinked")
        return True

    def _left_in_place(self) -> bool:
        log.warning("%s now holds another file; it is left in place", quoted_path(self.path))
        self.replaced = True
        return False


@contextlib.contextmanager
def opened(path: str, bases: list[str | None], fd: int | None) -> Iterator[Held | None]:
    """The row's file at ``path``, opened safely; None when nothing (regular) is there.

    With ``fd`` (the descriptor that was uploaded) that descriptor is used;
    otherwise the file is opened without following any symlink.
    """
    with contextlib.ExitStack() as stack:
        held: Held | None = None
        try:
            root, rel = safefs.anchor(path, [*bases, os.path.dirname(path)])
            dirfd, name = stack.enter_context(safefs.parent(root, rel))
            if fd is None:
                fd = safefs.open_beneath(dirfd, name, safefs.READ_FILE_FLAGS)
                stack.callback(os.close, fd)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                held = Held(dirfd, name, fd, st, path)
        except (FileNotFoundError, NotADirectoryError, safefs.UnsafePath):
            held = None
        yield held


def matches(st: os.stat_result, row: Row) -> bool:
    """Whether ``st`` is the version of the file this row uploaded."""
    if row.inode is None:
        return True
    same = (st.st_ino, st.st_size, st.st_mtime_ns) == (row.inode, row.size, row.mtime_ns)
    return same and (row.device is None or st.st_dev == row.device)


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    pos = 0
    while data := os.pread(fd, COPY_BLOCK, pos):
        h.update(data)
        pos += len(data)
    return h.hexdigest()


def _copy_into(
    fd: int, st: os.stat_result, dirfd: int, sha256: str | None, cancel: threading.Event | None = None
) -> str:
    """Copy the bytes of ``fd`` to a fresh temp name in ``dirfd``; returns the name.

    Hashes while copying; a hash other than ``sha256`` removes the copy and
    raises :class:`ChangedAfterUpload`. ``cancel`` set (syncd is stopping) removes
    the copy and raises ECANCELED at the next block: the move is done at the next start.
    """
    free = os.fstatvfs(dirfd)
    # no copy from byte 0 to ENOSPC, again and again (a file system that reports no blocks
    # at all, some FUSE ones, says nothing about its space)
    if free.f_blocks and free.f_bavail * free.f_frsize < st.st_size:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: a copy of {st.st_size:,} bytes, "
            f"{free.f_bavail * free.f_frsize:,} bytes free in the archive",
        )
    tmp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    out = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd
    )
    try:
        h = hashlib.sha256()
        pos = 0
        while data := os.pread(fd, COPY_BLOCK, pos):
            if cancel is not None and cancel.is_set():
                raise OSError(errno.ECANCELED, "syncd is stopping")
            h.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            pos += len(data)
        if sha256 is not None and h.hexdigest() != sha256:
            raise ChangedAfterUpload("the bytes changed after the upload")
        os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    os.close(out)
    crashpoints.point("archive.copied")
    return tmp


def _place(
    src: Held, dirfd: int, name: str, sha256: str | None, cancel: threading.Event | None = None
) -> None:
    """Give the bytes of ``src.fd`` the name ``name`` in ``dirfd``, never clobbering (FileExistsError)."""
    if src.st.st_nlink <= 1:
        try:
            os.link(f"/proc/self/fd/{src.fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)
            safefs.fsync_dirfd(dirfd)
            return
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
    tmp = _copy_into(src.fd, src.st, dirfd, sha256, cancel)
    try:
        os.link(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dirfd)
    safefs.fsync_dirfd(dirfd)


def _detach(src: Held, dirfd: int, name: str, sha256: str | None) -> None:
    """After the source name is gone: if another hard link still reaches the archived
    file, replace the archive entry by a private copy (our own name in our own folder)."""
    if os.fstat(src.fd).st_nlink <= 1:
        return
    try:
        if not safefs.same_file(os.stat(name, dir_fd=dirfd, follow_symlinks=False), src.st):
            return  # a copy already
        tmp = _copy_into(src.fd, src.st, dirfd, sha256)
    except (OSError, ChangedAfterUpload) as exc:
        log.warning(
            "archived file %r is still hard-linked elsewhere and could not be made a private copy: %s",
            name,
            exc,
        )
        return
    os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    safefs.fsync_dirfd(dirfd)
    log.info("archived file %r was still hard-linked elsewhere; replaced it by a private copy", name)


def _planned_done(planned: str, target_root: str, src: Held, sha256: str | None) -> bool:
    """Whether an interrupted move already put these bytes at ``planned``."""
    try:
        root, rel = safefs.anchor(planned, [target_root])
        fd = safefs.open_file(root, rel)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        if safefs.same_file(st, src.st):
            return True
        return sha256 is not None and st.st_size == src.st.st_size and _hash_fd(fd) == sha256
    finally:
        os.close(fd)


def move(
    src: Held,
    target_root: str,
    rel_dir: str,
    name: str,
    *,
    record: Callable[[str], None],
    planned: str | None = None,
    sha256: str | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Move ``src`` to ``target_root/rel_dir/name`` (or a suffixed name); returns the final path.

    ``record(target)`` is called (and must be durable) before each attempt to
    create ``target``; ``planned`` is a target recorded by an earlier,
    interrupted call, which is finished instead of starting over. ``cancel``: a copy
    under way stops when it is set (:func:`_copy_into`).
    """
    if planned is not None and _planned_done(planned, target_root, src, sha256):
        src.unlink()
        return planned
    os.makedirs(target_root, mode=DIR_MODE, exist_ok=True)
    rootfd = safefs.open_root(target_root)
    try:
        dirfd = safefs.makedirs(rootfd, rel_dir, DIR_MODE)
    finally:
        os.close(rootfd)

    def taken(candidate: str) -> bool:  # by anything, a planted link included
        try:
            os.stat(candidate, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    try:
        for candidate in free_names(name, taken):
            target = os.path.join(target_root, rel_dir, candidate)
            record(target)
            try:
                _place(src, dirfd, candidate, sha256, cancel)
            except FileExistsError:
                continue
            crashpoints.point("archive.placed")
            if src.written_since():  # during the copy or before the link: a new version
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(candidate, dir_fd=dirfd)  # it may hold bytes of both
                safefs.fsync_dirfd(dirfd)
                raise ChangedAfterUpload("the file was written to while it was archived")
            src.unlink()
            _detach(src, dirfd, candidate, sha256)
            return target
        raise AssertionError("unreachable")
    finally:
        os.close(dirfd)


def clean_temp(directory: str) -> int:
    """Remove copies left half-written by a crash during a cross-device move."""
    removed = 0
    for entry in safefs.walk(directory):
        name = os.path.basename(entry.relpath)
        if not name.startswith(TEMP_PREFIX) or not stat.S_ISREG(entry.stat.st_mode):
            continue
        try:
            with safefs.parent(directory, entry.relpath) as (dirfd, leaf):
                os.unlink(leaf, dir_fd=dirfd)
            removed += 1
        except OSError:
            pass
    return removed


def can_write(directory: str, size: int) -> bool:
    """Whether ``directory`` takes a small write (a full-disk probe); False on ENOSPC.

    The probe is a fresh ``O_EXCL`` name, so a planted symlink is never written through.
    """
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    name = f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
    rootfd = safefs.open_root(directory)
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=rootfd
        )
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=rootfd)
    finally:
        os.close(rootfd)
    return True
