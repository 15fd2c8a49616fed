"""What happens to a file after its upload is durably recorded.

Only rows in state ``uploaded`` come here; the caller has already committed
that state, and it is on disk before the source is touched: the target's
durable record covers it (one fsync for both), and a delete syncs first.
``after_upload`` decides:

``archive``
    Move the file to ``archive_dir``, keeping its sub-path (how, safely and
    without clobbering: :mod:`syncd.moves`). The target name is recorded in
    the ledger *before* the move, so a crash at any point can be finished
    without a second upload and without a second copy.
``delete``
    Unlink the source (only while its name still holds the uploaded file).
``keep``
    Leave it; later scans and events recognise the same version by its row,
    a rewrite that kept its size and mtime by its inode change time
    (:mod:`syncd.kept`).

The metadata sidecar read for the upload (``metadata_sidecar = true``,
recorded in the row's ``meta``) goes with its file: archived beside it as
``<archived name>.meta.json``, or deleted with it; kept with it. It is moved
after the file, its target recorded first (``sidecar_path``), so a crash
between the two moves is finished at startup like the file's own move. A
sidecar that changed since it was read is left where it is; one left in the
inbox once its file has left is recorded as that file's (:mod:`syncd.left_sidecars`).

A name that holds another file by now (replaced after the upload), or bytes
that changed through a second hard link, are a new version: nothing is
archived and the new version settles and is uploaded on its own.

Errors (permission denied, disk full) propagate as :class:`OSError`; the row
stays ``uploaded`` and the daemon tries again later. Nothing here deletes a
source before its copy is durable.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd import left_sidecars, metadata, safefs
from syncd.aside import put_back, recover_aside
from syncd.copies import ChangedAfterUpload
from syncd.earlier import drop_earlier, holds_uploaded, left_at, settle_earlier
from syncd.ledger import Ledger, Row
from syncd.logs import quoted_path
from syncd.moves import StillOpen, bytes_differ, matches, move, opened, refuse_if_written, roots
from syncd.names import with_suffix
from syncd.upload_source import lexists, relocate

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)
CHANGED = "changed after upload (written to since it was uploaded)"


def natural_target(row: Row, folder: FolderConfig) -> str | None:
    """Where the archive move of ``row`` goes when nothing is in its way there: the
    archive folder plus the file's sub-path. None when the folder does not archive
    or the name is taken (the move then picks and records a suffixed name).

    The upload records it with its "uploaded" commit, so the move needs no
    commit of its own, only the fsync that makes the record durable. It is a
    hint: the move checks the name again through directory descriptors.
    """
    if folder.after_upload != "archive" or folder.archive_dir is None:
        return None
    target = os.path.join(os.fspath(folder.archive_dir), row.relpath)
    return None if os.path.lexists(target) else target


class FolderAway(OSError):
    """The file's folder is unavailable (unmounted, missing): nothing can be said of the
    file until it is back, least of all that it vanished."""


def finish(
    ledger: Ledger,
    row: Row,
    folder: FolderConfig,
    fd: int | None = None,
    *,
    fresh: bool = False,
    away: Callable[[str], str | None] = lambda root: None,
    cancel: threading.Event | None = None,
) -> None:
    """Carry out ``after_upload`` for an ``uploaded`` row and mark it done.

    ``fd`` is the descriptor the upload read from, when the caller still
    holds it; without it (after a restart) the file is opened again and must
    match the ledger's device, inode, size and mtime. ``fresh``: the row was
    marked uploaded by this process just now, so its ``archive_path`` (the
    :func:`natural_target` recorded with the upload) has not been tried yet.
    ``away(root)``: why a watched folder is unavailable now, or None; a file not
    found in such a folder raises :class:`FolderAway` and its row stays uploaded.
    ``cancel`` set (syncd is stopping) cuts a copy into the archive short (ECANCELED).
    """
    path = row.current_path
    if folder.after_upload == "keep":
        location = None
        if fd is None and not fresh:  # a crash in an archive move, before "keep" was configured
            location = _undo_move(row, folder, path)
            # renamed during its upload, then a crash before its new path was recorded:
            # found by its inode, so that the scan's row for its new name is retired
            if location is None and row.location is None and not lexists(row.folder, row.relpath):
                relocate(ledger, row, folder)
        ledger.mark_done(row.id, location=location)
        return
    if fd is None:  # a restart or a sweep: a crash may have left the file renamed aside
        path = (
            recover_aside(path, roots(row, folder), row.device, row.inode, lambda st: matches(st, row))
            or path
        )
    with opened(path, roots(row, folder), fd) as src:
        if src is None or (fd is not None and not src.still_named()):
            problem = away(row.folder) if src is None and row.location is None else None
            if problem is not None:
                raise FolderAway(f"its folder is unavailable ({problem})")
            if _source_gone(ledger, row, folder, fresh, follow=fd is None):  # found renamed
                moved = ledger.get(row.id)
                assert moved is not None
                finish(ledger, moved, folder, away=away, cancel=cancel)
            return
        if row.location is None and not matches(src.st, row):
            # A different file now has this name (replaced after the upload): it is
            # a new version, not what was uploaded. Leave it for the scanner.
            earlier = _earlier(row, folder, fresh)
            if earlier is not None and settle_earlier(src, *earlier, row.size or 0, row.sha256):
                ledger.mark_done(row.id, location=earlier[0])  # archived before a crash
                reobserve(ledger, row)
                log.info(
                    "archived %s -> %s before a new file took its name",
                    quoted_path(path),
                    quoted_path(earlier[0]),
                )
                return
            _replaced(ledger, row, "replaced by a new file after upload; nothing archived")
            return
        planned, root = _earlier(row, folder, fresh) or (None, None)
        if folder.after_upload == "delete" and (
            planned is None or left_at(planned, root or "", src.st, row.size or 0, row.sha256) is None
        ):
            ledger.sync()  # the "uploaded" commit is on disk before the file is touched
            refuse_if_written(src)  # a writer's next bytes would be lost with the name
            # not read here for its upload (a restart): the bytes deleted must be those sent
            if src.written_since() or (fd is None and bytes_differ(src, row.sha256)):
                _replaced(ledger, row, f"{CHANGED}; not deleted, the new bytes are uploaded next")
                return
            deleted = src.unlink()
            finish_sidecar(ledger, row, folder, None)
            left_sidecars.note(ledger, row, folder)
            # the note says the file left the inbox: a new file that happens to get the
            # same name, size, mtime and (reused) inode is not this one (kept_versions)
            ledger.mark_done(row.id, note="deleted after upload" if deleted else None)
            log.info("deleted after upload: %s", quoted_path(src.path))
            if src.replaced and row.location is None:
                reobserve(ledger, row)  # a new file took the name meanwhile: its own row
            return
        # after_upload = "archive"; or "delete" now, but an archive move a crash cut short
        # made its entry: it is finished where it began, as it is once it removed the
        # inbox name (_source_gone), and no archived file is left without its row
        archive_dir = os.fspath(folder.archive_dir) if folder.archive_dir is not None else root
        assert archive_dir is not None  # config checks it for "archive"; "delete": planned
        try:
            target = move(
                src,
                archive_dir,
                os.path.dirname(row.relpath),
                os.path.basename(row.relpath),
                record=lambda t: _record_target(ledger, row, t),
                planned=planned,
                planned_root=root,
                sha256=row.sha256,
                cancel=cancel,
                check=fd is None,  # not read here for its upload (a restart): hashed again
                private=True,
            )
        except ChangedAfterUpload:
            _replaced(ledger, row, f"{CHANGED}; nothing archived, the new bytes are uploaded next")
            return
    if not src.rewritten:  # else the sidecar stays, with the new bytes it was written for
        finish_sidecar(ledger, row, folder, target)
        left_sidecars.note(ledger, row, folder)
    ledger.mark_done(row.id, location=target)
    log.info("archived %s -> %s", quoted_path(row.inbox_path), quoted_path(target))
    if src.replaced and row.location is None:
        reobserve(ledger, row)  # a new file took the name during the move: its own row


def _earlier(row: Row, folder: FolderConfig, fresh: bool) -> tuple[str, str] | None:
    """The target an earlier, interrupted move of the row recorded (None for a row marked
    uploaded just now, whose target was never tried), and the directory to resolve it from:
    the archive folder, or, for a target in an archive folder configured before (a crash,
    then archive_dir changed), the target's own directory: that move is finished where
    it began, since its entry may be made."""
    planned = None if fresh else row.archive_path
    if planned is None:
        return None
    if folder.archive_dir is not None and exists_under(planned, os.fspath(folder.archive_dir)):
        return planned, os.fspath(folder.archive_dir)
    return planned, os.path.dirname(planned)


def _undo_move(row: Row, folder: FolderConfig, path: str) -> str | None:
    """``after_upload`` is "keep" now, but a crash may have cut short an archive move of the
    row's file: put it back under its name if it was renamed aside to be unlinked, and
    remove the archive entry the move made (a link to the file kept in the inbox, which
    later edits would change, or a copy no row points at). A move that got as far as
    removing the inbox name is done: the archived file's path (the row's location)."""
    aside = recover_aside(path, roots(row, folder), row.device, row.inode, lambda st: matches(st, row))
    if aside is not None:
        with safefs.parent(*safefs.anchor(path, roots(row, folder))) as (dirfd, name):
            put_back(dirfd, os.path.basename(aside), name, path)
    earlier = _earlier(row, folder, fresh=False)
    if earlier is None:
        return None
    planned, root = earlier
    with opened(path, roots(row, folder), None) as src:
        if src is None:  # the inbox name was removed: archived before the crash
            return planned if holds_uploaded(planned, root, row.size or 0, row.sha256) else None
        if matches(src.st, row) and drop_earlier(src, planned, root, row.sha256):
            log.info(
                "kept %s in the inbox; removed %s, made by an archive move a crash cut short",
                quoted_path(path),
                quoted_path(planned),
            )
    return None


def _record_target(ledger: Ledger, row: Row, target: str) -> None:
    """Make the archive target durable before the move creates it."""
    if target == row.archive_path:
        ledger.sync(point="archive_target")  # recorded already (with the upload): sync it
    else:
        ledger.set_archive_target(row.id, target)


def _source_gone(
    ledger: Ledger, row: Row, folder: FolderConfig, fresh: bool = False, *, follow: bool = False
) -> bool:
    """The uploaded file is not at its path: archived before a crash, renamed in its folder
    (True, with ``follow``: after a restart, its new path is recorded, to be finished from
    there; a rename after the upload, while its descriptor is held, is not followed), or gone."""
    earlier = _earlier(row, folder, fresh)
    if earlier is not None and holds_uploaded(*earlier, row.size or 0, row.sha256):
        planned = earlier[0]
        finish_sidecar(ledger, row, folder, planned)
        left_sidecars.note(ledger, row, folder)
        ledger.mark_done(row.id, location=planned)
        return False
    # renamed during its upload and a crash before its new path was recorded, or renamed
    # while syncd was down: found by its inode, and not uploaded again under its new name
    if follow and row.location is None and relocate(ledger, row, folder):
        return True
    deleted = folder.after_upload == "delete"  # gone, as configured: deleted before a crash, most likely
    if deleted:
        finish_sidecar(ledger, row, folder, None)
    left_sidecars.note(ledger, row, folder)  # the one read for it, if its producer left it
    if deleted:
        ledger.mark_done(row.id, note="deleted after upload")
        log.info("deleted after upload (gone already at this look): %s", quoted_path(row.current_path))
    else:
        ledger.mark_done(row.id, note="source vanished after a confirmed upload; nothing archived")
        log.warning(
            "uploaded, but the file was gone before it could be archived: %s", quoted_path(row.current_path)
        )
    if row.location is None:
        reobserve(ledger, row)
    return False


def finish_sidecar(ledger: Ledger, row: Row, folder: FolderConfig, target: str | None) -> None:
    """Move the row's metadata sidecar beside ``target`` (its file's archive path), or
    delete it (``target`` None, after_upload = "delete").

    Only the sidecar version that was read for the upload (row ``meta``) is
    touched; one that is gone was moved already (or removed by its producer).
    """
    info = (row.meta or {}).get("sidecar")
    if not info or not isinstance(info.get("path"), str):
        return
    path = recover_aside(
        info["path"],
        roots(row, folder),
        info.get("device"),
        info.get("inode"),
        lambda st: metadata.sidecar_identity_matches(st, info),
    )
    with opened(path or info["path"], roots(row, folder), None) as src:
        if src is None:
            return
        if not metadata.sidecar_identity_matches(src.st, info):
            log.warning(
                "metadata sidecar %s changed after its file was uploaded; it is left in place",
                quoted_path(src.path),
            )
            return
        if target is None:
            if src.unlink():
                log.info("deleted metadata sidecar %s with its file", quoted_path(src.path))
            return
        assert folder.archive_dir is not None  # a target in the archive: after_upload = "archive"
        archive_root = os.fspath(folder.archive_dir)
        if not exists_under(target, archive_root):  # finished in the archive_dir of its time
            archive_root = os.path.dirname(target)
        try:
            _, rel = safefs.anchor(target, [archive_root])
        except safefs.UnsafePath:  # archive_dir changed (a reload) since the file was archived
            log.warning(
                "metadata sidecar %s stays in place: its file went to %s, outside the current archive_dir",
                quoted_path(src.path),
                quoted_path(target),
            )
            return
        try:
            placed = move(
                src,
                archive_root,
                os.path.dirname(rel),
                with_suffix(os.path.basename(rel), metadata.SIDECAR_SUFFIX),
                record=lambda t: ledger.set_sidecar_target(row.id, t),
                planned=row.sidecar_path,
                sha256=info.get("sha256"),
                private=True,
            )
        except (ChangedAfterUpload, StillOpen) as exc:
            log.warning(
                "metadata sidecar %s %s; it is left in place",
                quoted_path(src.path),
                "is still open for writing by a process"
                if isinstance(exc, StillOpen)
                else "changed after its file was uploaded",
            )
            return
    log.info("archived metadata sidecar %s -> %s", quoted_path(info["path"]), quoted_path(placed))


def _replaced(ledger: Ledger, row: Row, note: str) -> None:
    ledger.mark_done(row.id, note=note)
    reobserve(ledger, row)
    log.info("uploaded %s, but %s", quoted_path(row.inbox_path), note.split(";")[0])


def reobserve(ledger: Ledger, row: Row) -> None:
    """Whatever holds the row's inbox name now is a new version: let it settle. Out of
    descriptors to look (EMFILE, ENFILE), the name is put to settle all the same: the
    settle stage looks at it (forgets it if nothing is there), not the next rescan."""
    try:
        safefs.lstat(row.folder, row.relpath)
    except OSError as exc:
        if exc.errno not in safefs.SHORT:
            return
    ledger.observe(
        row.folder, [row.relpath], destination=row.destination, labels=row.labels, category=row.category
    )


def exists_under(path: str, root: str) -> bool:
    """Whether a regular file is at ``path``, under ``root``. Out of descriptors to look
    raises (the caller tries again later): it is no answer."""
    try:
        r, rel = safefs.anchor(path, [root])
        return stat.S_ISREG(safefs.lstat(r, rel).st_mode)
    except OSError as exc:
        if exc.errno in safefs.SHORT:
            raise
        return False
