"""What an archive move a crash cut short left behind, and settling it.

A move records its target before it makes it (:func:`syncd.moves.move`), so
after a crash the entry at that target may be the file itself (a link), a
copy of the bytes uploaded, or nothing of it. These look at the entry
through :mod:`syncd.safefs`, from the archive folder the move began in (the
caller says which), and decide on it: finish the move, keep a copy that is
the row's, or take a link out of the archive when the file it shares was
rewritten since (:mod:`syncd.archive` for the rows, :mod:`syncd.moves` for
a move resumed).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from syncd import safefs
from syncd.copies import hash_fd

if TYPE_CHECKING:
    from syncd.moves import Held


def left_at(planned: str, root: str, src: os.stat_result | None, size: int, sha256: str | None) -> str | None:
    """What an earlier move left at ``planned`` (resolved from ``root``): ``"link"`` (the
    file ``src`` itself), ``"copy"`` (``size`` bytes that hash to ``sha256``: the bytes
    uploaded), or None (nothing of it)."""
    try:
        base, rel = safefs.anchor(planned, [root])
        fd = safefs.open_file(base, rel)
    except OSError as exc:
        if exc.errno in safefs.SHORT:  # syncd out of descriptors: not "nothing there" (a
            raise  # second copy under a suffixed name, no row for the first); tried again later
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if src is not None and safefs.same_file(st, src):
            return "link"
        if sha256 is not None and st.st_size == size and hash_fd(fd) == sha256:
            return "copy"
        return None
    finally:
        os.close(fd)


def holds_uploaded(planned: str, root: str, size: int, sha256: str | None) -> bool:
    """Whether ``planned`` (resolved from ``root``) holds the bytes uploaded: a move that a
    crash cut short after it removed the inbox name."""
    return left_at(planned, root, None, size, sha256) == "copy"


def drop_link(planned: str, root: str, src: os.stat_result) -> None:
    """Remove the archive entry ``planned`` if it is the file ``src`` (a link)."""
    with safefs.parent(*safefs.anchor(planned, [root])) as (dirfd, name):
        if safefs.same_file(os.stat(name, dir_fd=dirfd, follow_symlinks=False), src):
            os.unlink(name, dir_fd=dirfd)
            safefs.fsync_dirfd(dirfd)


def drop_earlier(src: Held, planned: str, root: str, sha256: str | None) -> bool:
    """An earlier move of ``src`` is abandoned (the folder keeps its files now): remove the
    entry it made at ``planned``, a link to ``src`` or a copy of its bytes. True if it did."""
    how = left_at(planned, root, src.st, src.st.st_size, sha256)
    if how is None:
        return False
    with safefs.parent(*safefs.anchor(planned, [root])) as (dirfd, name):
        os.unlink(name, dir_fd=dirfd)
        safefs.fsync_dirfd(dirfd)
    return True


def settle_earlier(src: Held, planned: str, root: str, size: int, sha256: str | None) -> bool:
    """The inbox name holds another file than the one uploaded (``src``: rewritten with
    another size or mtime, or replaced) after an earlier move of the uploaded one made
    its entry at ``planned``. True if that entry holds the ``size`` bytes uploaded (a copy,
    or the uploaded file itself, replaced under its name): the move is done. A link to
    ``src`` is the rewritten file: it leaves the archive, and False."""
    how = left_at(planned, root, src.st, size, sha256)
    if how == "link":
        drop_link(planned, root, src.st)
    return how == "copy"
