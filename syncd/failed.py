"""Giving up on a file: it goes to ``failed_dir`` with a sidecar that says why.

:func:`to_failed` moves the file the way an archive move does
(:mod:`syncd.moves`: no symlink followed, no name clobbered, the target
recorded in the ledger first), then writes ``NAME.error.json`` beside it. A
sidecar never replaces a file: it is created under a fresh temp name and
linked into place, and when ``NAME.error.json`` is taken by anything but
this row's own earlier sidecar the next free ``NAME.error (1).json`` is
used. :func:`finish_interrupted_failures` completes, at startup, a move a
crash cut short. A metadata sidecar (``metadata_sidecar = true``) beside the
file in the inbox goes with it, as ``<failed name>.meta.json``, after the
file (target recorded first, like the file's), so the operator can fix it
there and ``syncd retry`` the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
import uuid
from typing import TYPE_CHECKING, Any

from syncd import metadata, safefs
from syncd.archive import exists_under, reobserve
from syncd.aside import recover_aside
from syncd.copies import TEMP_PREFIX, ChangedAfterUpload
from syncd.ledger import Ledger, Row, State
from syncd.logs import quoted_path
from syncd.moves import matches, move, opened, roots
from syncd.names import NAME_MAX, candidate_names, with_suffix

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)

ERROR_SUFFIX = ".error.json"
SIDECAR_MAX = 64 * 1024


def to_failed(ledger: Ledger, row: Row, folder: FolderConfig, reason: str) -> None:
    """Give up on a row: move its file to failed_dir with a sidecar, mark it failed.

    The target is recorded (``archive_path``) before the move, like an
    archive move, so :func:`finish_interrupted_failures` can complete a move
    that a crash cut short instead of losing track of the file. A file that
    is not the row's version any more (replaced meanwhile) is not moved.
    """
    location: str | None = None
    planned = row.archive_path if row.location is None else None
    failed_root = _began_in(planned, row.relpath, os.fspath(folder.failed_dir))
    if row.location is not None:
        location = row.location
    else:
        try:
            # a crash in the move may have left the file renamed aside (and a new version
            # saved over the name then renamed aside in its place: put back under its name)
            path = recover_aside(
                row.inbox_path, roots(row, folder), row.device, row.inode, lambda st: matches(st, row)
            )
            with opened(path or row.inbox_path, roots(row, folder), None) as src:
                if src is None or not matches(src.st, row):
                    if planned and exists_under(planned, failed_root):
                        location = planned  # moved before a crash; only the ledger was behind
                    if src is not None:
                        log.warning(
                            "not moving %s to the failed folder: it was replaced by a new "
                            "file, which is uploaded on its own",
                            quoted_path(row.inbox_path),
                        )
                        reobserve(ledger, row)
                else:
                    location = move(
                        src,
                        failed_root,
                        os.path.dirname(row.relpath),
                        os.path.basename(row.relpath),
                        record=lambda t: ledger.set_archive_target(row.id, t, reason=reason),
                        planned=planned,
                        sha256=row.sha256,
                    )
        except (OSError, ChangedAfterUpload) as exc:
            log.error(
                "could not move %s to the failed folder (%s); it stays in place",
                quoted_path(row.inbox_path),
                getattr(exc, "strerror", None) or exc,
            )
            location = None
    if location is not None:
        _move_metadata_sidecar(ledger, row, folder, location, failed_root)
        try:
            _write_sidecar(location, row, reason, [failed_root, *roots(row, folder)])
        except OSError as exc:
            log.warning(
                "could not write the reason next to %s: %s", quoted_path(location), exc.strerror or exc
            )
    ctime_ns = _ctime_in_place(row) if location is None else None
    ledger.mark_failed(row.id, error=reason, location=location, ctime_ns=ctime_ns)
    log.error("failed: %s: %s", quoted_path(row.inbox_path), reason)


def _ctime_in_place(row: Row) -> int | None:
    """The inode change time of a failed file that stays in the inbox, still the row's
    version: scans and events take a later change of it for a new version, tried again
    (syncd/kept.py). None when the name holds no such file now."""
    try:
        st = safefs.lstat(row.folder, row.relpath)
    except (OSError, safefs.UnsafePath):
        return None
    return st.st_ctime_ns if stat.S_ISREG(st.st_mode) and matches(st, row) else None


def _began_in(planned: str | None, relpath: str, failed_root: str) -> str:
    """The failed folder a move to ``planned`` (recorded before a crash cut it short) is
    finished in: the one it began in, when its entry is there and failed_dir has been
    changed since (as an archive move is finished in its archive_dir); else ``failed_root``."""
    if planned is None or exists_under(planned, failed_root):
        return failed_root
    began, sub = os.path.dirname(planned), os.path.dirname(relpath)
    if sub:
        if not began.endswith(os.sep + sub):
            return failed_root
        began = began[: -len(sub) - 1]
    return began if began and exists_under(planned, began) else failed_root


def _move_metadata_sidecar(
    ledger: Ledger, row: Row, folder: FolderConfig, location: str, failed_root: str
) -> None:
    """Move ``NAME.meta.json`` from the inbox to beside the failed file at ``location``."""
    if not getattr(folder, "metadata_sidecar", False) or row.location is not None:
        return  # a file retried from failed_dir has its sidecar beside it already
    path = metadata.sidecar_path(row.inbox_path)
    info = (row.meta or {}).get("sidecar") or {}
    identity = (info.get("device"), info.get("inode"))

    def ours(st: os.stat_result) -> bool:
        return metadata.sidecar_identity_matches(st, info) if info else (st.st_dev, st.st_ino) == identity

    try:
        if not info and row.sidecar_path:  # never read (malformed): the link a crash left tells it
            placed_st = safefs.lstat(*safefs.anchor(row.sidecar_path, [failed_root]))
            identity = (placed_st.st_dev, placed_st.st_ino)
    except (OSError, safefs.UnsafePath):
        pass
    try:
        found = recover_aside(path, roots(row, folder), *identity, ours)  # a move a crash cut short
        with opened(found or path, roots(row, folder), None) as src:
            if src is None:
                return
            _, rel = safefs.anchor(location, [failed_root])
            placed = move(
                src,
                failed_root,
                os.path.dirname(rel),
                with_suffix(os.path.basename(rel), metadata.SIDECAR_SUFFIX),
                record=lambda t: ledger.set_sidecar_target(row.id, t),
                planned=row.sidecar_path,
            )
    except (OSError, ChangedAfterUpload) as exc:
        log.error(
            "could not move the metadata sidecar of %s to the failed folder (%s); it stays in place",
            quoted_path(row.inbox_path),
            getattr(exc, "strerror", None) or exc,
        )
        return
    log.info("moved metadata sidecar %s -> %s", quoted_path(path), quoted_path(placed))


def finish_interrupted_failures(ledger: Ledger, folders: Any) -> int:
    """At startup: rows a crash caught while moving them to failed_dir.

    Such a row is still ``uploading`` (failed moves happen on the worker,
    before ``mark_failed``) and has a recorded target. Finish the move and
    mark it failed, so the file is neither lost nor uploaded again.
    """
    finished = 0
    for row in ledger.in_state(State.UPLOADING):
        folder = folders.get(row.folder)
        if row.archive_path is None or row.location is not None or folder is None:
            continue
        to_failed(
            ledger,
            row,
            folder,
            recorded_reason(row, folder)
            or row.last_error
            or "the move to the failed folder was interrupted; see the log before the restart",
        )
        finished += 1
    return finished


def forget_reason(row: Row, folder: FolderConfig) -> None:
    """A retried file that was sent from failed_dir has left it for good: the
    ``.error.json`` that said why it failed goes too, if it is this row's."""
    if row.location is None or folder.failed_dir is None:
        return
    try:
        root, rel = safefs.anchor(row.location + ERROR_SUFFIX, [os.fspath(folder.failed_dir)])
        with safefs.parent(root, rel) as (dirfd, name):
            if _sidecar_of(dirfd, name, row):
                os.unlink(name, dir_fd=dirfd)
    except (OSError, safefs.UnsafePath):
        pass  # gone already, or not ours: left as it is


def recorded_reason(row: Row, folder: FolderConfig) -> str | None:
    """The reason the ``.error.json`` beside the row's failed_dir target gives: written by
    a move that finished while recording it in the ledger did not."""
    if row.archive_path is None or folder.failed_dir is None:
        return None
    try:
        root, rel = safefs.anchor(row.archive_path + ERROR_SUFFIX, [os.fspath(folder.failed_dir)])
        fd = safefs.open_file(root, rel)
    except (OSError, safefs.UnsafePath):
        return None
    try:
        data = json.loads(os.pread(fd, SIDECAR_MAX, 0))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    ours = isinstance(data, dict) and data.get("uuid") == row.uuid
    return data["reason"] if ours and isinstance(data.get("reason"), str) else None


def _sidecar_of(dirfd: int, name: str, row: Row) -> bool:
    """Whether ``name`` is a regular file holding this row's own sidecar."""
    try:
        fd = safefs.open_beneath(dirfd, name, safefs.READ_FILE_FLAGS)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        data = json.loads(os.pread(fd, SIDECAR_MAX, 0))
        return isinstance(data, dict) and data.get("uuid") == row.uuid
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)


def _write_sidecar(path: str, row: Row, reason: str, bases: list[str | None]) -> str:
    """Write the reason next to the failed file at ``path``; returns the sidecar's name."""
    data = {
        "file": os.path.basename(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        "original_path": row.to_json()["folder"] + "/" + row.to_json()["relpath"],
        "ledger_id": row.id,
        "uuid": row.uuid,
        "destination": row.destination,
        "attempts": row.attempts,
        "reason": reason,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "retry": f"syncd retry {row.id}",
    }
    body = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    base = os.path.basename(path) + ERROR_SUFFIX
    if len(os.fsencode(base)) > NAME_MAX:
        base = f"{row.uuid}{ERROR_SUFFIX}"
    root, rel = safefs.anchor(path, bases)
    with safefs.parent(root, rel) as (dirfd, _name):
        tmp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            for candidate in candidate_names(base):
                if _sidecar_of(dirfd, candidate, row):
                    os.rename(tmp, candidate, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # our own: replace
                    break
                try:
                    os.link(tmp, candidate, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
                    break
                except FileExistsError:
                    continue  # a user's file (or anything else) has that name: never replace it
            safefs.fsync_dirfd(dirfd)
            return candidate
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dirfd)
