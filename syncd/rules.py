"""Which paths in a watched folder are candidates for upload (pure path logic).

A relative path is *ignored* when any of its components is junk (the
built-in list below, unless the folder sets ``ignore_junk = false``) or
matches one of the folder's ``exclude`` globs; otherwise it must match one
of the ``include`` globs (default ``*``). Globs use :mod:`fnmatch` syntax and
are tried against the whole relative path (``/``-separated, where ``*`` also
matches ``/``) and against the base name, so ``*.pdf`` matches
``scans/2026/a.pdf`` and ``drafts/*`` excludes everything under ``drafts``.
An exclude pattern that matches a directory, by its path or by its name,
excludes everything under it: ``drafts`` excludes ``drafts/a.pdf`` and
``acme/drafts/b.pdf`` alike, for events, scans and ``syncd explain``.
Matching is case-sensitive, as the file system is.
"""

from __future__ import annotations

import fnmatch
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

SIDECAR_SUFFIX = ".meta.json"  # syncd.metadata.SIDECAR_SUFFIX (kept here: this module is pure)

# Partial downloads, editor locks, OS metadata. Dot-files and dot-directories
# are junk too (checked separately): they are how writers hide work in progress.
JUNK_PATTERNS: tuple[str, ...] = (
    ".DS_Store",
    "._*",
    "Thumbs.db",
    "desktop.ini",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.crdownload",
    "~$*",
    ".~lock.*#",
)


@dataclass(frozen=True)
class Verdict:
    """Whether a path is a candidate, and the human-readable reason why (or why not)."""

    accepted: bool
    reason: str


@lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _matches(pattern: str, relpath: str, name: str) -> bool:
    rx = _compile(pattern)
    return bool(rx.match(relpath) or rx.match(name))


# aside.UNLINK_PREFIX (an uploaded file renamed aside to be removed) and copies.TEMP_PREFIX
# (a copy being made): never a file of the folder's, whatever ignore_junk says
OWN_PREFIXES = (".syncd-unlinking-", ".syncd-tmp-")


def junk_reason(component: str) -> str | None:
    """Why one path component is junk, or None if it is not."""
    if component.startswith("."):
        for pattern in JUNK_PATTERNS:
            if pattern.startswith(".") and _compile(pattern).match(component):
                return f"built-in junk pattern {pattern!r}"
        return "dot-file (hidden names are ignored)"
    for pattern in JUNK_PATTERNS:
        if _compile(pattern).match(component):
            return f"built-in junk pattern {pattern!r}"
    return None


def judge(
    relpath: str,
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    ignore_junk: bool = True,
    sidecars: bool = False,
) -> Verdict:
    """Decide whether ``relpath`` (relative, ``/``-separated) should be uploaded.

    ``sidecars`` (the folder's ``metadata_sidecar``): ``NAME.meta.json`` is
    never uploaded on its own; it goes with ``NAME`` (:mod:`syncd.metadata`).
    """
    parts = [p for p in relpath.split("/") if p]
    if not parts:
        return Verdict(False, "not a file path")
    name = parts[-1]
    if name.startswith(OWN_PREFIXES):
        return Verdict(False, "ignored: a name of syncd's own, for a moment (syncd/moves.py)")
    if ignore_junk:
        for component in parts:
            reason = junk_reason(component)
            if reason is not None:
                where = "" if component == name else f" (directory {component!r})"
                return Verdict(False, f"ignored: {reason}{where}")
    if sidecars and name.endswith(SIDECAR_SUFFIX) and len(name) > len(SIDECAR_SUFFIX):
        return Verdict(
            False,
            (
                f"metadata sidecar of {name[: -len(SIDECAR_SUFFIX)]!r} (metadata_sidecar = true): "
                "read when that file is uploaded and moved with it, never uploaded on its own"
            ),
        )
    for pattern in exclude:
        if _matches(pattern, relpath, name) or _dir_excluded(pattern, parts[:-1]):
            return Verdict(False, f"ignored: matches exclude pattern {pattern!r}")
    for pattern in include:
        if _matches(pattern, relpath, name):
            return Verdict(True, f"matches include pattern {pattern!r}")
    return Verdict(False, f"ignored: matches no include pattern ({', '.join(map(repr, include))})")


def _dir_excluded(pattern: str, dirs: Sequence[str]) -> bool:
    """Whether ``pattern`` matches one of the directories ``dirs`` (the components of a
    relative path, outermost first) by its path or its name: all under it is excluded."""
    rx = _compile(pattern)
    return any(rx.match("/".join(dirs[: i + 1])) or rx.match(d) for i, d in enumerate(dirs))


def dir_ignored(reldir: str, *, exclude: Sequence[str] = (), ignore_junk: bool = True) -> bool:
    """Whether a whole sub-directory can be skipped by scans (junk or excluded): exactly
    when :func:`judge` ignores every file under it for that reason."""
    parts = [p for p in reldir.split("/") if p]
    if ignore_junk and any(junk_reason(p) for p in parts):
        return True
    return any(_dir_excluded(p, parts) for p in exclude)


def describe_mode(mode: int) -> str:
    """What a file that is not a regular file is, said to the operator."""
    if stat.S_ISLNK(mode):
        return "symlink (symlinks are never followed)"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"
