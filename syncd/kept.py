"""Kept files: whether a file left in its folder after its upload still holds those bytes.

With ``after_upload = "keep"`` a file stays in its folder once uploaded, and
so does a file that failed and could not be moved to ``failed_dir``. Scans
(syncd/scanner.py) and the settle stage (an event about the file,
syncd/settle.py) must tell it from a new version under its name. Its size,
mtime and inode tell most new versions apart, but a rewrite in place can keep
all three (``cp --preserve=timestamps``, ``rsync -t --inplace``, ``touch -d``
after a write of the same size). Its inode change time (ctime) changes with
every write, and no program can set it back; it also changes with a chmod, a
chown, a new link or a rename, which leave the bytes alone. So a file with
its row's size, mtime and inode (:func:`judge`) is:

* the same version, unread, when its ctime is the one recorded (with the
  upload: the ctime at which the bytes sent were last found the file's);
* hashed when its ctime is another: the same bytes as the row's SHA-256 of
  the upload, and the new ctime is recorded (not hashed again until it
  changes), nothing is uploaded and no row is made; other bytes, and the
  row's version has left the inbox (a note on the row: ``rewritten``) and
  the file is a new version, ledgered and uploaded as one;
* a new version when its ctime is another and its row has no bytes to
  compare with (failed in place: nothing of it was uploaded, it is tried
  again);
* for a row from before ctimes were recorded (ledger schema 9): the same
  version when its ctime is older than when the file was queued for that
  upload (its ctime is recorded, unread), else hashed as above.

Hashing is the scanner thread's, never the main loop's: a scan hashes what
its walk found with a new ctime once the walk is done (:func:`look_closer`),
and the settle stage hands a file an event named to the scanner
(:func:`recheck`). syncd's own dealings with a kept file (a read lease, reads,
``fstat``) change only its access time, which is not its ctime: a file no one
touched is never read again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from syncd import safefs
from syncd.ledger import Ledger, Row
from syncd.ledger.versions import KeptVersion
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger("syncd.scanner")

SAME, ADOPT, LOOK, NEW = "same", "adopt", "look", "new"  # what judge() says
REWRITTEN = "rewritten"  # what a look found: the same size, mtime and inode, other bytes
BLOCK = 1 << 20
CONFIRM_BATCH = 1000  # ctimes recorded per transaction
OBSERVE_BATCH = 1000  # new versions ledgered per transaction (syncd.scanner.BATCH)
NOTE = (
    "rewritten in place after its upload (same size, modification time and inode, other bytes); "
    "the new bytes are a new version"
)

Looking = Callable[[str, int], None]  # told (path, size) before a file is hashed: the scanner's heartbeat


def judge(version: KeptVersion, st: os.stat_result) -> str:
    """What the file found at a kept version's path is, without reading it: :data:`SAME`
    (nothing to do), :data:`ADOPT` (the same version: record its ctime), :data:`LOOK`
    (hash it) or :data:`NEW` (another version)."""
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (version.size, version.mtime_ns, version.inode):
        return NEW
    if version.ctime_ns is None:  # recorded before syncd kept ctimes
        changed = version.queued_at is None or st.st_ctime_ns > version.queued_at * 1e9
        return LOOK if changed and version.hashed else ADOPT
    if st.st_ctime_ns == version.ctime_ns:
        return SAME
    return LOOK if version.hashed else NEW


def known(ledger: Ledger, row: Row, st: os.stat_result, recheck: Callable[[str, str], None]) -> bool:
    """Whether the settling ``row``'s quiet file (``st``) is the version kept at its path,
    not a new one (the settle stage forgets the row). One whose ctime changed is handed to
    ``recheck`` (the scanner hashes it) and is no new version until that look says so."""
    version = ledger.kept_version(row.folder, row.relpath)
    if version is None:
        return False
    verdict = judge(version, st)
    if verdict == LOOK:
        recheck(row.folder, row.relpath)
    return verdict != NEW


def recheck(
    ledger: Ledger,
    folder: FolderConfig,
    relpath: str,
    *,
    looking: Looking | None = None,
    stop: threading.Event | None = None,
) -> int:
    """The look the settle stage asked for: ``relpath``, a kept file an event named, whose
    ctime changed. Returns 1 when it is a new version (ledgered), else 0."""
    root = os.fspath(folder.path)
    try:
        st = safefs.lstat(root, relpath)
    except (FileNotFoundError, NotADirectoryError, safefs.UnsafePath):
        return 0  # gone (or behind a symlink now): nothing to look at
    if not stat.S_ISREG(st.st_mode):
        return 0
    version = ledger.kept_version(root, relpath)
    if version is None:  # no version kept there any more (a scan got there first): settle judges it
        return _observe(ledger, folder, [relpath])
    verdict = judge(version, st)
    if verdict == SAME:
        return 0
    return look_closer(
        ledger, folder, [(relpath, version, verdict, st.st_ctime_ns)], looking=looking, stop=stop
    )


def look_closer(
    ledger: Ledger,
    folder: FolderConfig,
    found: Sequence[tuple[str, KeptVersion, str, int]],
    *,
    looking: Looking | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Act on what :func:`judge` said of these files (path, version, verdict, ctime): record
    the ctimes of those adopted, hash those to look at, ledger the new versions. Returns how
    many new versions were ledgered. ``stop`` set: the rest is left for the next scan."""
    root = os.fspath(folder.path)
    confirmed: list[tuple[int, int]] = []
    new: list[str] = []
    for relpath, version, verdict, ctime_ns in found:
        if verdict == ADOPT:
            confirmed.append((version.id, ctime_ns))
        elif verdict == NEW:
            new.append(relpath)
        elif stop is None or not stop.is_set():
            seen = _look(ledger, root, relpath, version, looking)
            if seen is None:
                continue  # could not be read: looked at again by the next scan
            outcome, ctime_ns = seen
            if outcome == SAME:
                confirmed.append((version.id, ctime_ns))
                continue
            if outcome == REWRITTEN:
                ledger.rewritten(version.id, NOTE)  # first: its version left the inbox
                log.info(
                    "%s was rewritten in place after its upload (same size and modification time, "
                    "other bytes): a new version",
                    quoted_path(os.path.join(root, relpath)),
                )
            new.append(relpath)
        if len(confirmed) >= CONFIRM_BATCH:
            ledger.confirm_ctimes(confirmed)
            confirmed = []
    ledger.confirm_ctimes(confirmed)
    return _observe(ledger, folder, new)


def _look(
    ledger: Ledger, root: str, relpath: str, version: KeptVersion, looking: Looking | None
) -> tuple[str, int] | None:
    """What the file at a kept version's path is, read: :data:`SAME` (its version's bytes,
    with the ctime it had before they were read: a write during the read changes it after
    that), :data:`REWRITTEN` (other bytes), or :data:`NEW` (no longer that file, or a version
    with no bytes to compare with: for the settle stage to judge). None: it could not be
    read (gone, unreadable); syncd out of descriptors raises (the scan is done again)."""
    row = ledger.get(version.id)
    if row is None or row.sha256 is None:
        return NEW, 0
    path = os.path.join(root, relpath)
    try:
        fd = safefs.open_file(root, relpath)
    except (FileNotFoundError, NotADirectoryError, safefs.UnsafePath):
        return None  # gone meanwhile: nothing kept there to look at
    except OSError as exc:
        if exc.errno in safefs.SHORT:
            raise
        level = logging.DEBUG if isinstance(exc, PermissionError) else logging.WARNING
        log.log(level, "cannot read kept file %s to compare it with its upload: %s", quoted_path(path), exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or judge(version, st) == NEW:
            return NEW, st.st_ctime_ns
        if looking is not None:
            looking(path, st.st_size)
        digest = hashlib.sha256()
        pos = 0
        while pos < st.st_size and (data := os.pread(fd, min(BLOCK, st.st_size - pos), pos)):
            digest.update(data)
            pos += len(data)
    finally:
        os.close(fd)
    return (SAME if digest.hexdigest() == row.sha256 else REWRITTEN), st.st_ctime_ns


def _observe(ledger: Ledger, folder: FolderConfig, relpaths: list[str]) -> int:
    """Ledger new versions, one transaction per OBSERVE_BATCH (as scans do)."""
    return sum(
        ledger.observe(
            os.fspath(folder.path),
            relpaths[i : i + OBSERVE_BATCH],
            destination=folder.destination,
            labels=folder.labels,
            category=folder.category,
        )
        for i in range(0, len(relpaths), OBSERVE_BATCH)
    )
