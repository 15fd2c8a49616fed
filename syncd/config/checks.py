"""The rules between folders, and about the folders syncd writes into.

Watched folders are distinct and never nested (:func:`check_overlaps`); a
folder's archive/failed folders are apart from it and from each other
(:func:`check_own_dirs`) and from every other folder's; archive/failed
folders and ``daemon.state_dir`` must not lie inside a watched folder nor be
writable by group/others (:func:`check_unsafe_dirs`); a literal secret in a
file others can read is a warning (:func:`check_permissions`), and so is a
folder others can write into on a host that lets anyone hard-link any file
(:func:`check_hardlinks`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from syncd._options import dotted
from syncd.config.model import DaemonConfig, DestinationConfig, FolderConfig
from syncd.errors import Problem
from syncd.secrets import Secret


def check_own_dirs(prefix: str, folder: FolderConfig, problems: list[Problem]) -> None:
    """A folder's archive/failed folders: not the folder, not around it, apart from each other."""
    dirs = [
        (k, d)
        for k, d in (("archive_dir", folder.archive_dir), ("failed_dir", folder.failed_dir))
        if d is not None
    ]
    for key, d in dirs:
        if d == folder.path:
            problems.append(
                Problem(
                    f"{prefix}.{key}", (f"{d} is the watched folder itself; files would be uploaded again")
                )
            )
        elif folder.path.is_relative_to(d):
            problems.append(
                Problem(f"{prefix}.{key}", f"the watched folder {folder.path} lies inside it ({d})")
            )
    if len(dirs) == 2 and _overlap(dirs[0][1], dirs[1][1]):
        problems.append(
            Problem(
                f"{prefix}.failed_dir",
                (
                    f"{folder.failed_dir} overlaps archive_dir ({folder.archive_dir}); "
                    "keep archived and failed files apart"
                ),
            )
        )


def _overlap(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def check_overlaps(folders: list[tuple[int, FolderConfig]], problems: list[Problem]) -> None:
    """Watched folders distinct and not nested; archive/failed folders apart from all others."""
    for n, (i, a) in enumerate(folders):
        for j, b in folders[:n]:
            if a.path == b.path:
                problems.append(Problem(f"folders[{i}].path", f"{a.path} is already watched by folders[{j}]"))
            elif _overlap(a.path, b.path):
                inside = a.path.is_relative_to(b.path)
                (k, inner), (m, outer) = ((i, a), (j, b)) if inside else ((j, b), (i, a))
                problems.append(
                    Problem(
                        f"folders[{k}].path",
                        (
                            f"{inner.path} lies inside folders[{m}].path ({outer.path}); "
                            "nested watched folders are not supported"
                        ),
                    )
                )
    dirs = [
        (i, f, k, d)
        for i, f in folders
        for k, d in (("archive_dir", f.archive_dir), ("failed_dir", f.failed_dir))
        if d is not None
    ]
    for n, (i, f, key, d) in enumerate(dirs):
        for j, _, other_key, other in dirs[:n]:
            if i != j and _overlap(d, other):
                how = "is also" if d == other else "overlaps"
                problems.append(
                    Problem(
                        f"folders[{i}].{key}",
                        (f"{d} {how} folders[{j}].{other_key} ({other}); {_own_dir_hint(f, key, d)}"),
                    )
                )
        for j, g in folders:
            if i != j and _overlap(d, g.path):
                problems.append(
                    Problem(
                        f"folders[{i}].{key}",
                        (
                            f"{d} overlaps the watched folder folders[{j}].path ({g.path}); "
                            "its files would be uploaded again"
                        ),
                    )
                )


def check_unsafe_dirs(
    folders: list[tuple[int, FolderConfig]], state_dir: Path, problems: list[Problem], *, strict: bool
) -> None:
    """archive/failed folders and state_dir that producers could tamper with.

    Inside a watched folder: an error. Existing and writable by group/others:
    an error when ``strict``, else a warning. A folder with
    ``allow_unsafe_dirs = true`` is exempt from both.
    """
    hint = "move it out of the inbox, or set allow_unsafe_dirs = true on the folder"
    for i, f in folders:
        if f.allow_unsafe_dirs:
            continue
        if state_dir.is_relative_to(f.path) and state_dir != f.path:
            problems.append(
                Problem(
                    "daemon.state_dir",
                    (
                        f"{state_dir} lies inside the watched folder folders[{i}].path ({f.path}): "
                        "whoever drops files there could read or replace the ledger; move it out, or "
                        f"set allow_unsafe_dirs = true on folders[{i}]"
                    ),
                )
            )
        for key, d in (("archive_dir", f.archive_dir), ("failed_dir", f.failed_dir)):
            if d is None or d == f.path or f.path.is_relative_to(d):
                continue  # reported by check_own_dirs
            if d.is_relative_to(f.path):
                problems.append(
                    Problem(
                        f"folders[{i}].{key}",
                        (
                            f"{d} lies inside the watched folder {f.path}: whoever drops files there "
                            f"could also write into it, replace it or plant symlinks; {hint}"
                        ),
                    )
                )
                continue
            try:
                mode = d.stat().st_mode
            except OSError:
                continue  # created by syncd when first needed
            if stat.S_ISDIR(mode) and mode & 0o022:
                problems.append(
                    Problem(
                        f"folders[{i}].{key}",
                        (
                            f"{d} is writable by group/others (mode {stat.S_IMODE(mode):04o}): they "
                            f"could replace what syncd moves there or plant symlinks; run `chmod go-w "
                            f"{d}`, or set allow_unsafe_dirs = true on the folder"
                        ),
                        severity="error" if strict else "warning",
                    )
                )


def check_state_dir(state_dir: Path, problems: list[Problem]) -> None:
    """``daemon.state_dir`` where syncd can make it: the nearest folder above it that
    exists is a directory (a file there makes every start fail; the state_dir itself is
    the value's own rule)."""
    for part in state_dir.parents:
        try:
            mode = part.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # (a file further up: found there)
        except OSError:
            return  # cannot tell (permissions): the start says
        if not stat.S_ISDIR(mode):
            problems.append(
                Problem(
                    "daemon.state_dir",
                    f"{part} is not a directory: syncd cannot make {state_dir} (its ledger and lock) there",
                )
            )
        return


# 1: the kernel lets a user hard-link only files they own or may read and write
PROTECTED_HARDLINKS = Path("/proc/sys/fs/protected_hardlinks")


def check_hardlinks(folders: list[tuple[int, FolderConfig]], problems: list[Problem]) -> None:
    """Warn about each folder others can write into while ``fs.protected_hardlinks`` is 0.

    A hard link is the file itself, not a path to it, so no check of names
    tells it apart: a producer could link into the inbox a file only syncd
    may read (its ledger, a credential) and syncd would upload it. Unknown
    (no /proc/sys, as inside the shipped unit): nothing is said.
    """
    try:
        if PROTECTED_HARDLINKS.read_text().strip() != "0":
            return
    except OSError:
        return
    for i, f in folders:
        try:
            st = f.path.stat()
        except OSError:
            continue
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            continue  # only syncd's own user writes there
        problems.append(
            Problem(
                f"folders[{i}].path",
                (
                    f"fs.protected_hardlinks is 0 on this host: whoever can write into {f.path} can "
                    "hard-link into it any file of the same filesystem, one only syncd may read "
                    "included, and syncd would upload it; run `sysctl -w fs.protected_hardlinks=1` "
                    "(and set it in /etc/sysctl.d/ for the next boot)"
                ),
                severity="warning",
            )
        )


def _own_dir_hint(folder: FolderConfig, key: str, d: Path) -> str:
    sub = key.removesuffix("_dir")
    if folder.state_dir is not None and d == folder.state_dir / sub / (folder.path.name or "root"):
        return (
            f"set {key} explicitly (the default <state_dir>/{sub}/<folder basename> "
            "repeats when two folders share a basename)"
        )
    return f"give each folder its own {key}"


def check_permissions(
    file: Path,
    daemon: DaemonConfig | None,
    destinations: Mapping[str, DestinationConfig],
    problems: list[Problem],
) -> None:
    """Warn about each literal secret in ``file`` (a destination's, or the daemon's webhook
    URL and secret) when group/others can read it."""
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except OSError:
        return
    if not mode & 0o044:
        return
    tables = [(dotted("destinations", d.name), d.options) for d in destinations.values()]
    for table, options in ([("daemon", daemon)] if daemon is not None else []) + tables:
        for f in fields(options):
            value = getattr(options, f.name)
            if isinstance(value, Secret) and value.is_literal:
                problems.append(
                    Problem(
                        dotted(table, f.name),
                        (
                            f"literal secret in {file}, which is readable by group/others "
                            f'(mode {mode:04o}); run `chmod 600 {file}` or use "env:NAME" '
                            'or "credential:NAME"'
                        ),
                        severity="warning",
                    )
                )


__all__ = [
    "check_hardlinks",
    "check_overlaps",
    "check_own_dirs",
    "check_permissions",
    "check_state_dir",
    "check_unsafe_dirs",
]
