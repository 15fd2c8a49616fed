"""Private copies of a file's bytes, made beside their target in a trusted folder.

A copy is what the archive (and the failed folder) gets when the file itself
cannot be linked there: another file system, a second hard link, a file
another process still has open (:mod:`syncd.moves` decides). It is read from
the descriptor that was uploaded, hashed while copied and compared with the
SHA-256 that was uploaded, written to a fresh ``O_EXCL`` temp name of syncd's
own (:data:`TEMP_PREFIX`, never ledgered) and fsynced; the caller links it
into place. A crash leaves at most such a temp file, which :func:`clean_temp`
removes at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import uuid

from syncd import crashpoints, safefs
from syncd.rules import OWN_PREFIXES

TEMP_PREFIX = OWN_PREFIXES[1]  # a copy being made: never ledgered (rules.judge)
DIR_MODE = 0o700
COPY_BLOCK = 1 << 20


class ChangedAfterUpload(Exception):
    """The file's bytes are no longer the ones uploaded (written to since the upload)."""


def hash_fd(fd: int) -> str:
    """The hex SHA-256 of the file of ``fd``, read from its start."""
    h = hashlib.sha256()
    pos = 0
    while data := os.pread(fd, COPY_BLOCK, pos):
        h.update(data)
        pos += len(data)
    return h.hexdigest()


def copy_into(
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
