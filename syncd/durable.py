"""Small files replaced whole: written to a temp name beside them, fsynced, renamed over,
the directory fsynced. A crash leaves the old file or the new one, never a part (the
config that `syncd folder add` edits, the ledger rebuild's marker)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def replace(path: Path, text: str, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``text``.

    The new file gets ``mode`` if given, else the old file's mode (0600 when
    there was none), and the old file's owner when we are allowed to set it.
    """
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is None:
                mode = stat.S_IMODE(st.st_mode) if st else 0o600
            os.fchmod(fh.fileno(), mode)
            if st is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync ``directory``: the names just made or replaced in it are on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
