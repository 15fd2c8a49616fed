"""Metadata sidecars a file left in the inbox, never given to a later file of its name.

With ``metadata_sidecar = true`` the sidecar read for an upload leaves the
inbox with its file (:func:`syncd.archive.finish_sidecar`). One that stays
there once the file has left it (archived, deleted after its upload, or
removed by its producer) is that file's: changed after the upload (or still
open for writing), written after it (a late sidecar), or the one read for a
file its producer removed before the archive move. :func:`note` records it
(device, inode, size, mtime and ctime) in the row's ``meta`` as
``left_sidecar``, with a warning.

A later file of the same name found it beside itself and was sent with the
earlier file's labels and category, without a word. :func:`left_by` tells
the uploader that the sidecar it read for a file is the one an earlier
version left, unchanged since (its ctime too: written again, renamed or
touched, it is the producer's sidecar for the next file); the uploader then
fails the file with the reason, and both go to ``failed_dir``.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING, Any

from syncd import metadata, safefs
from syncd.ledger import Ledger, Row, State
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger("syncd.archive")

KEY = "left_sidecar"  # in the row's meta; retention keeps such rows (syncd/ledger/retention.py)


def _identity(st: os.stat_result) -> dict[str, int]:
    return {
        "device": st.st_dev,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def note(ledger: Ledger, row: Row, folder: FolderConfig) -> None:
    """Record the sidecar beside the row's inbox name, if one is there, as left behind by
    the row's file, which has just left the inbox."""
    if not getattr(folder, "metadata_sidecar", False):
        return
    if row.location is not None and not row.location.startswith(row.folder.rstrip("/") + "/"):
        return  # sent from failed_dir (syncd retry), with the sidecar beside it there
    try:
        safefs.lstat(row.folder, row.relpath)
        return  # a new file has the name already: the sidecar may well be its own
    except (OSError, safefs.UnsafePath):
        pass
    try:
        st = safefs.lstat(row.folder, metadata.sidecar_path(row.relpath))
    except (OSError, safefs.UnsafePath):
        return  # none (the usual case: it went with its file), or not reachable safely
    if not stat.S_ISREG(st.st_mode):
        return
    ledger.note_left_sidecar(row.id, {KEY: _identity(st)})
    log.warning(
        "metadata sidecar %s stays in the inbox without its file; it is not given to a later "
        "file of that name unless written again",
        quoted_path(metadata.sidecar_path(row.inbox_path)),
    )


def left_by(ledger: Ledger, row: Row, sidecar: metadata.Sidecar) -> Row | None:
    """The earlier version of the row's file that left ``sidecar`` (read beside the row's
    inbox name) in the inbox, when it is still as that file left it; else None."""
    if sidecar.path != metadata.sidecar_path(row.inbox_path):
        return None  # read elsewhere: beside a file retried from failed_dir
    earlier = ledger.previous_done(row)
    left: Any = ((earlier.meta or {}).get(KEY) if earlier is not None else None) or None
    if earlier is None or not isinstance(left, dict):
        return None
    try:
        st = safefs.lstat(row.folder, metadata.sidecar_path(row.relpath))
    except (OSError, safefs.UnsafePath):
        return None
    same = (sidecar.device, sidecar.inode) == (st.st_dev, st.st_ino) and _identity(st) == left
    return earlier if same else None


def reason(row: Row, earlier: Row) -> str:
    """Why the row's file fails: the sidecar beside it is ``earlier``'s."""
    name = os.path.basename(row.relpath)
    uploaded = {State.DONE: "uploaded", State.SKIPPED: "skipped"}.get(earlier.state, "finished")
    return (
        f"metadata sidecar {quoted_path(os.path.basename(metadata.sidecar_path(name)))} was left in "
        f"the inbox by an earlier {quoted_path(name)} (#{earlier.id}, {uploaded}) and has not changed "
        "since; it is not taken for this file: check it, then syncd retry this file (or remove it)"
    )
