"""Moving a file's bytes to a new name without leaving the trusted folders.

The primitives :mod:`syncd.archive` and :mod:`syncd.failed` share. Every
name is resolved through :mod:`syncd.safefs`: from a descriptor of the
watched folder, the archive_dir or the failed_dir, never through a symlink
at any component, so a producer who swaps a directory for a link cannot
make syncd move, copy or write anything outside those folders. The bytes
that reach the target are those of the *descriptor that was uploaded* (or,
after a crash, of the file whose device, inode, size and mtime match the
ledger):

* same filesystem, one link, a file of syncd's own user that no one else may
  write (:func:`linkable`): a ``linkat`` of the open descriptor (through
  ``/proc/self/fd``) to the target name, which fails rather than clobber;
* otherwise (another filesystem, a producer's file, which its owner may still
  reach through a descriptor it kept, a file with a second hard link): a
  copy *from the descriptor* (:mod:`syncd.copies`), hashed while copied and
  compared with the SHA-256 that was uploaded;
* a file some process has open for writing is not moved (:class:`StillOpen`):
  it waits in the inbox until it is closed, and if it was written to, the
  new bytes are a new version;
* after a restart (no descriptor that was uploaded) the bytes are hashed
  again (a copy while it copies) and must be those uploaded;
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
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from syncd import crashpoints, earlier, safefs, writers
from syncd.aside import aside_prefix, put_back
from syncd.copies import (
    DIR_MODE,
    ChangedAfterUpload,
    copy_into,
    hash_fd,
)
from syncd.folder_probe import relinked
from syncd.ledger import Row
from syncd.logs import quoted_path
from syncd.names import free_names

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)

# link(2) errors after which the bytes are copied instead
_COPY_INSTEAD = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.ENOENT, errno.EACCES)


class StillOpen(OSError):
    """A process has the file open for writing: it is not moved or deleted until it closes
    it (the bytes may still change; if they do, they are a new version)."""


def refuse_if_written(src: Held) -> None:
    """Raise :class:`StillOpen` while a process has the file open for writing, where the
    kernel says (syncd's own files, or any with ``CAP_LEASE``: :mod:`syncd.writers`)."""
    if writers.held_for_writing(src.fd, src.st.st_dev):  # the file system's type looked up once
        raise StillOpen(errno.EBUSY, "a process still has it open for writing")


def linkable(src: Held) -> bool:
    """Whether the archive may take the file itself (a link) rather than a private copy:
    only a file of syncd's own user that no one else may write. A producer's inode is
    never linked: as its owner, the producer may have kept any descriptor to it (one
    opened for writing after it settled, a read-only or ``O_PATH`` one it reopens for
    writing through ``/proc``, none of which a lease can rule out) and would reach the
    archive through it. Raises :class:`StillOpen` while a process has it open for writing."""
    refuse_if_written(src)
    return src.st.st_uid == os.geteuid() and not src.st.st_mode & 0o022


def bytes_differ(src: Held, sha256: str | None) -> bool:
    """Whether the file's bytes now hash to something other than ``sha256`` (a file this
    process did not read for its upload: after a restart)."""
    return sha256 is not None and hash_fd(src.fd) != sha256


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
        # written to after an earlier move archived a copy of it (a crash, then a producer's
        # rewrite): left in place as a new version, with the sidecar it may have been given
        self.rewritten = False

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


def _place(
    src: Held,
    dirfd: int,
    name: str,
    sha256: str | None,
    cancel: threading.Event | None = None,
    link: bool = True,
) -> None:
    """Give the bytes of ``src.fd`` the name ``name`` in ``dirfd``, never clobbering
    (FileExistsError): a link of the file itself when ``link`` allows, else a copy."""
    if link and src.st.st_nlink <= 1:
        try:
            os.link(f"/proc/self/fd/{src.fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)
            safefs.fsync_dirfd(dirfd)
            return
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
    tmp = copy_into(src.fd, src.st, dirfd, sha256, cancel)
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
        tmp = copy_into(src.fd, src.st, dirfd, sha256)
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


def _finish_planned(
    src: Held, planned: str, target_root: str, how: str, sha256: str | None, check: bool
) -> None:
    """Finish a move that an interruption left placed at ``planned`` (``how``: see
    :func:`syncd.earlier.left_at`): remove the source name, unless the source was written to
    since the upload. It was, if it changed under this process, or (``check``, after a
    restart) if its bytes no longer hash to ``sha256``: a producer rewrote it while syncd
    was stopped, perhaps with its old size and mtime. Then the source is a new version
    and stays. A copy in the archive holds the bytes uploaded and stays too (``src`` is
    marked ``replaced``: the caller lets the new version settle); a link is the rewritten
    file itself, so it leaves the archive (:class:`ChangedAfterUpload`)."""
    refuse_if_written(src)  # as a move does: a writer's next bytes would be lost with the name
    if not (src.written_since() or (check and bytes_differ(src, sha256))):
        src.unlink()
        if how == "link":  # as a move does: a link elsewhere must not reach the archive
            with safefs.parent(*safefs.anchor(planned, [target_root])) as (dirfd, name):
                _detach(src, dirfd, name, sha256)
        return
    if how == "link":
        earlier.drop_link(planned, target_root, src.st)
        raise ChangedAfterUpload("it was written to after it was archived, before its name left the inbox")
    log.warning(
        "%s was written to after its upload was archived (%s) and before it left the inbox: "
        "the archive keeps the bytes uploaded, and the new ones are uploaded next",
        quoted_path(src.path),
        quoted_path(planned),
    )
    src.replaced = src.rewritten = True


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
    check: bool = False,
    private: bool = False,
    planned_root: str | None = None,
) -> str:
    """Move ``src`` to ``target_root/rel_dir/name`` (or a suffixed name); returns the final path.

    ``record(target)`` is called (and must be durable) before each attempt to
    create ``target``; ``planned`` is a target recorded by an earlier,
    interrupted call, which is finished instead of starting over (``planned_root``: the
    directory it is under, when not ``target_root``: an archive_dir changed since). ``cancel``: a copy
    under way stops when it is set (:func:`syncd.copies.copy_into`).

    ``private`` (the archive) must end up with bytes no producer can still change: the
    file itself is linked only if :func:`linkable`, else copied. ``check``: this process
    did not read the bytes for their upload (a restart): a link is made only if they
    still hash to ``sha256`` (a copy compares its own hash), else :class:`ChangedAfterUpload`.
    """
    planned_root = planned_root or target_root
    for root in {target_root, planned_root}:  # (checked not to be inside a watched folder)
        why = relinked(root)
        if why is not None:
            raise OSError(errno.ELOOP, f"{quoted_path(root)} {why}")
    how = None if planned is None else earlier.left_at(planned, planned_root, src.st, src.st.st_size, sha256)
    if planned is not None and how is not None:
        _finish_planned(src, planned, planned_root, how, sha256, check)
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
        link = linkable(src) if private else True
        if check and link and bytes_differ(src, sha256):  # a copy compares its own hash
            raise ChangedAfterUpload("its bytes are not those uploaded")
        for candidate in free_names(name, taken):
            target = os.path.join(target_root, rel_dir, candidate)
            record(target)
            try:
                _place(src, dirfd, candidate, sha256, cancel, link=link)
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
