"""An uploaded file's name renamed aside before it is removed, and put back when it is not.

:meth:`syncd.moves.Held.unlink` renames the name to remove to
``.syncd-unlinking-<device>-<inode>-<random>`` first, so that a new version
saved over the name in the instant between its look and the unlink is not
the one removed: a file found there that is not the uploaded one is put back
(:func:`put_back`, never replacing a file: :func:`rename_noreplace`). After a
crash in between, :func:`recover_aside` finds the file renamed aside again.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

from syncd import safefs
from syncd.logs import quoted_path
from syncd.names import candidate_names
from syncd.rules import OWN_PREFIXES

log = logging.getLogger("syncd.moves")

UNLINK_PREFIX = OWN_PREFIXES[0]  # never ledgered (rules.judge)

_RENAME_NOREPLACE = 1
_renameat2: Any = None


def rename_noreplace(dirfd: int, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` in the directory ``dirfd``; FileExistsError when ``new``
    exists, which is never replaced (``renameat2(RENAME_NOREPLACE)``; where the kernel
    or the file system lacks it, a hard link and an unlink, which refuse the same way;
    where hard links are refused too, a look and a rename, which a name taken in the
    instant between would lose to)."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", False)
    if _renameat2:
        done = _renameat2(dirfd, os.fsencode(old), dirfd, os.fsencode(new), _RENAME_NOREPLACE)
        if done == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), new)
    try:
        os.link(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # no hard links here
        try:
            os.stat(new, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new) from None
    os.unlink(old, dir_fd=dirfd)


def aside_prefix(device: int, inode: int) -> str:
    """The start of the names :meth:`Held.unlink` renames the file ``(device, inode)`` to."""
    return f"{UNLINK_PREFIX}{device:x}-{inode:x}-"


def put_back(dirfd: int, aside: str, name: str, path: str) -> str:
    """A file renamed aside that is not the one to remove: under ``name`` again (``path``,
    for the log), or a free ``name (N)`` should that be taken; never replacing a file."""
    for candidate in candidate_names(name):
        try:
            rename_noreplace(dirfd, aside, candidate)
        except FileExistsError:
            continue
        if candidate != name:
            log.warning(
                "a new file took the name %s while syncd removed the uploaded one, and another "
                "after it; the first of them is now %s",
                quoted_path(path),
                quoted_path(candidate),
            )
        return candidate
    raise AssertionError("candidate_names never ends")


def recover_aside(path: str, bases: list[str | None], device: int | None, inode: int | None,
                  ours: Callable[[os.stat_result], bool]) -> str | None:  # fmt: skip
    """After a crash between :meth:`Held.unlink`'s rename aside and its unlink: the file
    ``(device, inode)`` renamed aside beside ``path``, when ``path`` no longer holds it.

    Ours (``ours(stat)``: the bytes uploaded): its path, for the caller to finish with.
    Another file (a new version saved over the name in that instant, renamed aside in
    its place): put back under the name; None.
    """
    if device is None or inode is None:
        return None
    prefix = aside_prefix(device, inode)
    try:
        root, rel = safefs.anchor(path, [*bases, os.path.dirname(path)])
        with safefs.parent(root, rel) as (dirfd, name):
            try:
                if ours(os.stat(name, dir_fd=dirfd, follow_symlinks=False)):
                    return None  # still under its name: nothing was renamed aside
            except FileNotFoundError:
                pass
            listing = safefs.open_beneath(dirfd, "", safefs.READ_DIR_FLAGS)
            try:
                with os.scandir(listing) as it:
                    asides = sorted(e.name for e in it if e.name.startswith(prefix))
            finally:
                os.close(listing)
            found = None
            for aside in asides:
                st = os.stat(aside, dir_fd=dirfd, follow_symlinks=False)
                if found is None and stat.S_ISREG(st.st_mode) and ours(st):
                    found = os.path.join(os.path.dirname(path), aside)
                else:
                    put_back(dirfd, aside, name, path)
            return found
    except (OSError, safefs.UnsafePath) as exc:
        if isinstance(exc, OSError) and exc.errno in safefs.SHORT:
            raise  # syncd out of descriptors: not "nothing aside"; the caller tries again later
        log.warning("cannot look for %s renamed aside: %s", quoted_path(path), exc)
        return None
