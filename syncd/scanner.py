"""Scans: the startup reconcile and the periodic safety rescan.

Events can be lost (the inotify queue overflows silently, watches run out,
the daemon was down), so every folder is walked at startup and every
``rescan_seconds``. A walk records every regular file that the folder's rules
accept and that has no active ledger row, and is not a version already
uploaded and kept in the folder (syncd/kept.py); the settle stage then judges
it as it would a file reported by an event. Nothing is stat'ed twice here:
the directory entries carry what is needed.

The walk never follows symlinks (to files or directories), skips junk and
excluded directories as a whole, and never enters the folder's own archive,
failed or state directories when they lie inside it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd import kept, rules, safefs
from syncd.ledger import Ledger
from syncd.ledger.versions import LOOKUP, KeptVersion
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger(__name__)

BATCH = 1000
IGNORED_EXAMPLES = 5


@dataclass
class Ignored:
    """Names a walk passed over because the folder's rules ignore them (junk such as
    ``.foo.swp`` or ``~$doc.docx``, excluded, or matching no include pattern); a
    skipped directory counts once. Shown by `syncd status` (via the heartbeat)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)  # the first few relative paths

    def add(self, relpath: str) -> None:
        self.count += 1
        if len(self.examples) < IGNORED_EXAMPLES:
            self.examples.append(relpath)


def walk(
    folder: FolderConfig,
    on_special: Callable[[str, int], None] | None = None,
    start: str = "",
    ignored: Ignored | None = None,
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relpath, stat)`` for every accepted regular file under ``folder.path``.

    The listing goes through :func:`syncd.safefs.walk`: from directory
    descriptors, never through a symlink, with loop detection and bounds.
    """
    root = os.fspath(folder.path)
    skip_dirs = {os.fspath(p) for p in folder.ignored_dirs()}

    def descend(relpath: str, st: os.stat_result) -> bool:
        if not folder.recursive or os.path.join(root, relpath) in skip_dirs:
            return False
        if rules.dir_ignored(relpath, exclude=folder.exclude, ignore_junk=folder.ignore_junk):
            if ignored is not None:
                ignored.add(relpath + "/")
            return False
        return True

    try:
        safefs.components(start)
    except safefs.UnsafePath:
        log.warning(
            "not scanning %s: not a plain path inside the folder", quoted_path(os.path.join(root, start))
        )
        return
    for entry in safefs.walk(root, start=start, descend=descend, shortage_raises=True):
        relpath, st = entry.relpath, entry.stat
        if stat.S_ISDIR(st.st_mode):
            continue
        verdict = rules.judge(
            relpath,
            include=folder.include,
            exclude=folder.exclude,
            ignore_junk=folder.ignore_junk,
            sidecars=folder.metadata_sidecar,
        )
        if not verdict.accepted:
            if ignored is not None and verdict.reason.startswith("ignored"):  # not a sidecar
                ignored.add(relpath)
            continue
        if not stat.S_ISREG(st.st_mode):
            if on_special is not None:
                on_special(relpath, st.st_mode)
            continue
        yield relpath, st


def scan_folder(
    ledger: Ledger,
    folder: FolderConfig,
    *,
    on_special: Callable[[str, int], None] | None = None,
    start: str = "",
    ignored: Ignored | None = None,
    looking: kept.Looking | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Ledger every accepted file in ``folder`` not already tracked; returns how many were new.
    ``ignored`` counts the names the rules passed over.

    A file still there after its upload (after_upload = "keep", or failed in place) is
    known by its row; one whose inode change time is no longer the one recorded is
    hashed once the walk is done (syncd/kept.py: ``looking`` is told of each, ``stop``
    leaves the rest for the next scan)."""
    root = os.fspath(folder.path)
    active = ledger.active_paths(root, start)
    any_kept = ledger.any_kept(root)  # (one kept during the walk: settle knows it, kept.known)
    walked: list[tuple[str, os.stat_result]] = []  # not active: kept versions looked up a batch at a time
    batch: list[str] = []
    closer: list[tuple[str, KeptVersion, str, int]] = []
    created = 0

    def sort_out() -> None:
        """The walked files that are no kept version (or another one) go into ``batch``."""
        if not walked:
            return
        if not any_kept:  # a folder that archives its files: every walked file is new
            batch.extend(relpath for relpath, _ in walked)
            walked.clear()
            return
        finished = ledger.kept_versions(root, [relpath for relpath, _ in walked])
        for relpath, st in walked:
            version = finished.get(relpath)
            if version is not None and (verdict := kept.judge(version, st)) != kept.NEW:
                if verdict != kept.SAME:  # its inode changed since: looked at once the walk is done
                    closer.append((relpath, version, verdict, st.st_ctime_ns))
                continue
            batch.append(relpath)
        walked.clear()

    for relpath, st in walk(folder, on_special, start, ignored):
        if relpath in active:
            continue
        walked.append((relpath, st))
        if len(walked) >= LOOKUP:
            sort_out()
        if len(batch) >= BATCH:
            created += _flush(ledger, folder, batch)
    sort_out()
    created += _flush(ledger, folder, batch)
    return created + kept.look_closer(ledger, folder, closer, looking=looking, stop=stop)


def _flush(ledger: Ledger, folder: FolderConfig, batch: list[str]) -> int:
    if not batch:
        return 0
    n = ledger.observe(
        os.fspath(folder.path),
        batch,
        destination=folder.destination,
        labels=folder.labels,
        category=folder.category,
    )
    batch.clear()
    return n
