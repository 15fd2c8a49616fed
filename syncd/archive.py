"""What happens to a file after its upload is durably recorded.

Only rows in state ``uploaded`` come here; the caller has already committed
that state. ``after_upload`` decides:

``archive``
    Move the file to ``archive_dir``, keeping its sub-path. Never overwrite:
    a taken name gets a `` (1)`` style suffix. The target name is recorded in
    the ledger *before* the move, so a crash at any point can be finished
    without a second upload and without a second copy. Same filesystem:
    ``link`` (which fails rather than clobber) then ``unlink``; across
    filesystems (EXDEV): copy to a temp name in the target directory, fsync,
    ``link`` into place, then ``unlink`` the source. Directories are fsynced
    after every name change.
``delete``
    Unlink the source.
``keep``
    Leave it; later scans recognise the same version and ignore it.

:func:`to_failed` moves a file that cannot be uploaded into ``failed_dir``
the same way, with a small ``.error.json`` sidecar that says why.

Errors (permission denied, disk full) propagate as :class:`OSError`; the row
stays ``uploaded`` and the daemon tries again later. Nothing here deletes a
source before its copy is durable.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from syncd import crashpoints
from syncd.ledger import Ledger, Row
from syncd.logs import qp

log = logging.getLogger(__name__)

TEMP_PREFIX = ".syncd-tmp-"
NAME_MAX = 255
ERROR_SUFFIX = ".error.json"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse directory fsync
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def candidate_names(name: str) -> Any:
    """``name``, then ``stem (1).ext``, ``stem (2).ext`` ... each within NAME_MAX bytes."""
    yield name
    stem, ext = os.path.splitext(name)
    if stem == "" or len(os.fsencode(ext)) > 32:
        stem, ext = name, ""
    n = 1
    while True:
        suffix = f" ({n}){ext}"
        room = NAME_MAX - len(os.fsencode(suffix))
        raw = os.fsencode(stem)[:room]
        while True:  # do not cut a multi-byte character in half
            try:
                raw.decode("utf-8")
                break
            except UnicodeDecodeError as exc:
                if exc.start < len(raw) - 4:
                    break  # not UTF-8 to begin with; bytes are fine
                raw = raw[:-1]
        yield os.fsdecode(raw) + suffix
        n += 1


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a, follow_symlinks=False), os.stat(b, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _place(src: str, target: str) -> None:
    """Give ``src``'s bytes the name ``target`` without clobbering (FileExistsError)."""
    target_dir = os.path.dirname(target)
    try:
        os.link(src, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        tmp = os.path.join(target_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            shutil.copystat(src, tmp)
            crashpoints.point("archive.copied")
            os.link(tmp, target)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    fsync_dir(target_dir)


def move(src: str, target_dir: str, name: str, *, record: Callable[[str], None],
         planned: str | None = None, sha256: str | None = None) -> str:
    """Move ``src`` to ``target_dir/name`` (or a suffixed name); returns the final path.

    ``record(target)`` is called (and must be durable) before each attempt to
    create ``target``; ``planned`` is a target recorded by an earlier,
    interrupted call, which is finished instead of starting over.
    """
    if planned is not None and os.path.exists(planned):
        done = _same_file(src, planned) or (
            sha256 is not None and os.path.getsize(planned) == os.path.getsize(src)
            and _sha256(planned) == sha256
        )
        if done:
            _unlink_source(src)
            return planned
    os.makedirs(target_dir, exist_ok=True)
    for candidate in candidate_names(name):
        target = os.path.join(target_dir, candidate)
        if os.path.lexists(target):
            continue
        record(target)
        try:
            _place(src, target)
        except FileExistsError:
            continue
        crashpoints.point("archive.placed")
        _unlink_source(src)
        return target
    raise AssertionError("unreachable")


def _unlink_source(src: str) -> None:
    os.unlink(src)
    fsync_dir(os.path.dirname(src))
    crashpoints.point("archive.unlinked")


def finish(ledger: Ledger, row: Row, folder: Any) -> None:
    """Carry out ``after_upload`` for an ``uploaded`` row and mark it done."""
    src = row.current_path
    if folder.after_upload == "keep":
        ledger.mark_done(row.id)
        return
    if not os.path.lexists(src):
        if row.archive_path and os.path.exists(row.archive_path):
            ledger.mark_done(row.id, location=row.archive_path)
        else:
            ledger.mark_done(row.id, note="source vanished after a confirmed upload; nothing archived")
            log.warning("uploaded, but the file was gone before it could be archived: %s", qp(src))
        return
    st = os.lstat(src)
    if row.location is None and row.inode is not None and \
            (st.st_ino, st.st_size, st.st_mtime_ns) != (row.inode, row.size, row.mtime_ns):
        # A different file now has this name (replaced after the upload): it is
        # a new version, not what was uploaded. Leave it for the scanner.
        ledger.mark_done(row.id, note="replaced by a new file after upload; nothing archived")
        ledger.observe(row.folder, [row.relpath], destination=row.destination,
                       labels=row.labels, category=row.category)
        log.info("uploaded %s, but a new file took its name; that one is uploaded next",
                 qp(src))
        return
    if folder.after_upload == "delete":
        _unlink_source(src)
        ledger.mark_done(row.id)
        log.info("deleted after upload: %s", qp(src))
        return
    archive_dir = os.fspath(folder.archive_dir)
    rel_dir = os.path.dirname(row.relpath)
    target = move(src, os.path.join(archive_dir, rel_dir), os.path.basename(row.relpath),
                  record=lambda t: ledger.set_archive_target(row.id, t),
                  planned=row.archive_path, sha256=row.sha256)
    ledger.mark_done(row.id, location=target)
    log.info("archived %s -> %s", qp(row.inbox_path), qp(target))


def to_failed(ledger: Ledger, row: Row, folder: Any, reason: str) -> None:
    """Give up on a row: move its file to failed_dir with a sidecar, mark it failed.

    The target is recorded (``archive_path``) before the move, like an
    archive move, so :func:`finish_interrupted_failures` can complete a move
    that a crash cut short instead of losing track of the file.
    """
    src = row.current_path
    location: str | None = None
    planned = row.archive_path if row.location is None else None
    if row.location is None and planned and not os.path.lexists(src) and os.path.exists(planned):
        location = planned  # moved before a crash; only the ledger was behind
    elif row.location is None and os.path.lexists(src):
        failed_dir = os.path.join(os.fspath(folder.failed_dir), os.path.dirname(row.relpath))
        try:
            location = move(src, failed_dir, os.path.basename(row.relpath),
                            record=lambda t: ledger.set_archive_target(row.id, t),
                            planned=planned, sha256=row.sha256)
        except OSError as exc:
            log.error("could not move %s to the failed folder (%s); it stays in place",
                      qp(src), exc.strerror or exc)
            location = None
    elif row.location is not None:
        location = row.location
    if location is not None:
        try:
            _write_sidecar(location, row, reason)
        except OSError as exc:
            log.warning("could not write the reason next to %s: %s", qp(location),
                        exc.strerror or exc)
    ledger.mark_failed(row.id, error=reason, location=location)
    log.error("failed: %s: %s", qp(row.inbox_path), reason)


def finish_interrupted_failures(ledger: Ledger, folders: Any) -> int:
    """At startup: rows a crash caught while moving them to failed_dir.

    Such a row is still ``uploading`` (failed moves happen on the worker,
    before ``mark_failed``) and has a recorded target. Finish the move and
    mark it failed, so the file is neither lost nor uploaded again.
    """
    finished = 0
    for row in ledger.in_state("uploading"):
        folder = folders.get(row.folder)
        if row.archive_path is None or row.location is not None or folder is None:
            continue
        to_failed(ledger, row, folder, row.last_error or
                  "the move to the failed folder was interrupted; see the log before the restart")
        finished += 1
    return finished


def _write_sidecar(path: str, row: Row, reason: str) -> None:
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
    sidecar = path + ERROR_SUFFIX
    if len(os.fsencode(os.path.basename(sidecar))) > NAME_MAX:
        sidecar = os.path.join(os.path.dirname(path), f"{row.uuid}{ERROR_SUFFIX}")
    tmp = sidecar + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, sidecar)


def clean_temp(directory: str) -> int:
    """Remove copies left half-written by a crash during a cross-device move."""
    removed = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed
