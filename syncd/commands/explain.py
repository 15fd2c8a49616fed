"""`syncd explain PATH`: will this file be uploaded, and why (not)? What became of it?

PATH may be a file in a watched folder (the rule that accepts or ignores it,
how long it still settles, its ledger row), a watched folder or a sub-folder
of one, or a file in an archive or failed folder (the ledger row that put it
there: when it was uploaded and archived, where to, its remote id; or why it
failed). Exit 0 with an answer; exit 2 when PATH does not exist and the
ledger has never seen it (a typo, most likely).
"""

from __future__ import annotations

import argparse
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from syncd import config as configmod
from syncd import rules, writers
from syncd.commands.common import EXIT_CONFIG, EXIT_OK, load, open_ledger, shown, stamp
from syncd.ledger import ACTIVE_STATES, Ledger, Row, State
from syncd.lock import holder_pid
from syncd.logs import quoted_path

T = TypeVar("T")


def _look_up(cfg: configmod.Config, query: Callable[[Ledger], T]) -> T | None:
    """``query`` on the config's ledger, opened read-only for it; None when there is none."""
    ledger = open_ledger(cfg)
    if ledger is None:
        return None
    try:
        return query(ledger)
    finally:
        ledger.close()


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=False)
    text, known = explain_path(cfg, os.path.abspath(os.fspath(args.path)))
    print(text)
    return EXIT_OK if known else EXIT_CONFIG


def explain(cfg: configmod.Config, path: str) -> str:
    """A human-readable answer to "will this file be uploaded, and why (not)?"."""
    return explain_path(cfg, path)[0]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _lstat(path: str) -> os.stat_result | None:
    """The path's own stat; None when nothing is there. Another error (a folder this
    user may not enter) is the command's to report: "no such file" would be false."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def explain_path(cfg: configmod.Config, path: str) -> tuple[str, bool]:
    """The answer, and whether anything is known about ``path`` (it exists, or the ledger
    has a row for it)."""
    st = _lstat(path)
    # Configured paths are resolved (symlinks followed): match a spelling through a
    # symlinked directory too, without following a symlink at the last component.
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    for candidate in dict.fromkeys((path, real)):
        for f in cfg.folders:
            root = os.fspath(f.path)
            if candidate == root or (
                st is not None and stat.S_ISDIR(st.st_mode) and os.path.realpath(path) == root
            ):
                return _watched_folder(cfg, f, path, st), True
            for kind, d in (("archive", f.archive_dir), ("failed", f.failed_dir)):
                if d is not None and _under(candidate, os.fspath(d)):
                    return _moved(cfg, f, kind, os.fspath(d), candidate, path, st)
        for f in cfg.folders:
            if _under(candidate, os.fspath(f.path)):
                return _in_folder(cfg, f, candidate, path, st)
    gone = _in_removed_folder(cfg, path, *dict.fromkeys((path, real)))
    if gone is not None:
        return gone, True
    if st is None:
        return f"{quoted_path(path)}: no such file or folder (and not inside any watched folder)", False
    return f"{quoted_path(path)} is not inside any watched folder; syncd does not upload it", True


def _daemon_says(cfg: configmod.Config, root: str) -> str:
    """A line on what keeps the running daemon from the folder ``root`` (its heartbeat's
    folder problems), or ""."""
    if holder_pid(Path(cfg.daemon.state_dir)) is None:
        return ""
    meta = _look_up(cfg, lambda ledger: ledger.get_meta("daemon", {}))
    problems = meta.get("folder_problems") if isinstance(meta, dict) else None
    problem = problems.get(root) if isinstance(problems, dict) else None
    if not isinstance(problem, str):
        return ""
    return (
        f"\n  the running syncd reports this folder: {shown(problem)}; "
        "it neither scans nor reads it until that is over"
    )


def _in_removed_folder(cfg: configmod.Config, path: str, *candidates: str) -> str | None:
    """What the ledger says of a file of a folder the configuration no longer has (a
    reload removed it, or the config was edited): its inbox path, or where its bytes went."""

    def find(ledger: Ledger) -> tuple[str, Row] | None:
        configured = {os.fspath(f.path) for f in cfg.folders}
        for root in set(ledger.counts_by_folder()) - configured:
            for candidate in candidates:
                rel = candidate[len(root.rstrip(os.sep)) + 1 :] if _under(candidate, root) else None
                row = ledger.latest_for_path(root, rel) if rel else ledger.at_location(root, candidate)
                if row is not None:
                    return root, row
        return None

    found = _look_up(cfg, find)
    if found is None:
        return None
    root, row = found
    lines = [
        f"{quoted_path(path)}: a file of {quoted_path(root)}, a folder the configuration no longer has",
        f"  ledger row #{row.id} ({row.uuid}): {row.state}"
        + (f": {shown(row.last_error)}" if row.last_error else ""),
    ]
    if row.location is not None:
        lines.append(f"  its bytes are at {quoted_path(row.location)}")
    if row.state in ACTIVE_STATES:
        lines.append(
            "  it waits in the ledger: an upload under way when the folder was removed finishes; "
            "the rest goes on once the folder is configured again (add it back, then reload)"
        )
    elif row.state == State.FORGOTTEN:
        lines.append(
            f"  forgotten {stamp(row.updated_at)}; if the folder is configured again, the file is"
            " uploaded as a new file"
        )
    return "\n".join(lines)


def _watched_folder(
    cfg: configmod.Config, folder: configmod.FolderConfig, path: str, st: os.stat_result | None
) -> str:
    root = os.fspath(folder.path)
    lines = [f"{quoted_path(path)} is a watched folder -> destination {folder.destination!r}"]
    lines += [said.lstrip("\n") for said in [_daemon_says(cfg, root)] if said]
    extra = []
    if folder.labels:
        extra.append(f"labels {list(folder.labels)}")
    if folder.category:
        extra.append(f"category {folder.category!r}")
    lines.append(
        "  files dropped into it "
        + ("and its sub-folders " if folder.recursive else "")
        + "are uploaded"
        + (f" with {', '.join(extra)}" if extra else "")
        + f" once unchanged for {folder.settle_seconds:g}s, then: {folder.after_upload}"
        + (
            f" to {quoted_path(os.fspath(folder.archive_dir))}"
            if folder.after_upload == "archive" and folder.archive_dir
            else ""
        )
    )
    if st is None:
        lines.append("  it does not exist yet: syncd waits for it (create it, or fix the path)")
    counts = _look_up(cfg, lambda ledger: ledger.counts_by_folder().get(root, {}))
    if counts:
        lines.append("  ledger: " + ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items())))
    lines.append(f"  `syncd explain {quoted_path(os.path.join(root, 'NAME'))}` tells about one file")
    return "\n".join(lines)


def _moved(
    cfg: configmod.Config,
    folder: configmod.FolderConfig,
    kind: str,
    directory: str,
    candidate: str,
    path: str,
    st: os.stat_result | None,
) -> tuple[str, bool]:
    """A path in a folder's archive or failed folder: the row that put it there."""
    root = os.fspath(folder.path)
    where = f"the {kind} folder of {quoted_path(root)}"
    if candidate.rstrip(os.sep) == directory.rstrip(os.sep):
        what = (
            "uploaded files are moved here"
            if kind == "archive"
            else "files syncd gave up on are moved here, each with NAME.error.json"
        )
        return f"{quoted_path(path)} is {where}: {what}; syncd never uploads from it", True
    row = _look_up(cfg, lambda ledger: ledger.at_location(root, candidate))
    if row is None and st is None and kind == "failed":  # requeued since (`syncd retry`)?
        rel = os.path.relpath(candidate, directory)
        row = _look_up(cfg, lambda ledger: ledger.latest_for_path(root, rel))
        if row is not None and row.state != "failed":
            lines = [
                f"{quoted_path(path)}: no such file in {where} now; the ledger's latest row for "
                f"{quoted_path(row.inbox_path)} is #{row.id} ({row.uuid}): {row.state} "
                "(a failed file `syncd retry` requeued is sent from the failed folder and leaves it)"
            ]
            return "\n".join(lines + _row_lines(row, folder, cfg)), True
        row = None
    if row is None:
        if st is None:
            return f"{quoted_path(path)}: no such file, and the ledger has no row for it ({where})", False
        return (
            f"{quoted_path(path)} is in {where}; the ledger has no row that put it there. syncd "
            "never uploads from it"
        ), True
    lines = [
        f"{quoted_path(path)} is in {where}: ledger row #{row.id} ({row.uuid}), "
        f"from {quoted_path(row.inbox_path)}: {row.state}"
    ]
    lines += _row_lines(row, folder, cfg)
    if st is None:
        lines.append("  it is no longer at this path")
    return "\n".join(lines), True


def _in_folder(
    cfg: configmod.Config,
    folder: configmod.FolderConfig,
    candidate: str,
    path: str,
    st: os.stat_result | None,
) -> tuple[str, bool]:
    root = os.fspath(folder.path)
    rel = candidate[len(root.rstrip(os.sep)) + 1 :]
    head = f"{quoted_path(path)}: folder {quoted_path(root)} -> destination {folder.destination!r}"
    head += _daemon_says(cfg, root)
    for d in folder.ignored_dirs():
        if _under(candidate, os.fspath(d)):
            return (
                head + f"\n  not uploaded: inside {quoted_path(os.fspath(d))}, which syncd never watches",
                st is not None,
            )
    if st is not None and stat.S_ISDIR(st.st_mode):
        if not folder.recursive:
            return (
                head + "\n  a sub-folder, and the folder has recursive = false: files in it are not uploaded",
                True,
            )
        if rules.dir_ignored(rel, exclude=folder.exclude, ignore_junk=folder.ignore_junk):
            return (
                head + "\n  a sub-folder the rules ignore (junk or exclude): files in it are not uploaded",
                True,
            )
        return head + "\n  a sub-folder: files dropped into it are uploaded like the folder's own", True
    missing = "" if st is not None else " (there is no such file now)"
    if not folder.recursive and "/" in rel:
        return (
            head + "\n  not uploaded: in a sub-folder and the folder has recursive = false" + missing,
            st is not None,
        )
    verdict = rules.judge(
        rel,
        include=folder.include,
        exclude=folder.exclude,
        ignore_junk=folder.ignore_junk,
        sidecars=folder.metadata_sidecar,
    )
    if not verdict.accepted:
        return head + f"\n  not uploaded: {verdict.reason}{missing}", st is not None
    lines = [head, f"  rules: {verdict.reason}"]
    if st is not None and not stat.S_ISREG(st.st_mode):
        lines.append(f"  not uploaded: it is a {rules.describe_mode(st.st_mode)}")
        return "\n".join(lines), True
    row = _look_up(cfg, lambda ledger: ledger.latest_for_path(root, rel))
    if row is None:
        if st is None:
            lines.append("  no such file, and the ledger has never seen it")
            return "\n".join(lines), False
        lines.append(
            "  not seen yet: the watcher or the next scan will pick it up, then it "
            f"settles for {folder.settle_seconds:g}s before upload"
        )
        return "\n".join(lines), True
    lines.append(f"  ledger row #{row.id} ({row.uuid}): {row.state}")
    lines += _row_lines(row, folder, cfg)
    if st is not None and row.location is not None:
        lines.append("  the file now at this path is a new version; it will be uploaded too")
    return "\n".join(lines), True


def _open_for_writing(row: Row) -> bool:
    """Whether some process holds the settling file open for writing (syncd/writers.py);
    False when that cannot be told (another user's file, without CAP_LEASE)."""
    if threading.current_thread() is threading.main_thread():
        writers.enable()
    return writers.file_held_for_writing(row.folder, row.relpath) is True


def _row_lines(row: Row, folder: configmod.FolderConfig, cfg: configmod.Config) -> list[str]:
    """What the ledger says about ``row``, one line per fact."""
    lines: list[str] = []
    if row.state == State.SETTLING:
        left = folder.settle_seconds - (time.time() - row.changed_at)
        lines.append(
            f"  settling: waiting until it has been unchanged for "
            f"{folder.settle_seconds:g}s ({max(left, 0):.1f}s left if it stays quiet)"
        )
        if _open_for_writing(row):
            lines.append("  a process still has it open for writing: it waits until that process closes it")
    elif row.state in (State.QUEUED, State.UPLOADING):
        lines.append(
            f"  {row.state}, attempt {row.attempts} of {folder.max_attempts}"
            + (" (`syncd status` shows its progress)" if row.state == State.UPLOADING else "")
        )
        if row.location is not None:
            lines.append(f"  it is uploaded from {quoted_path(row.location)}")
    elif row.state == State.RETRYING:
        failed = f"attempt {row.attempts} failed" if row.attempts else "the last try failed (not counted)"
        lines.append(f"  {failed}: {shown(row.last_error)}")
        overdue = row.next_attempt_at is not None and row.next_attempt_at <= time.time()
        why = " (due: it waits for a free worker, or for its destination to answer again)"
        lines.append(f"  next attempt {stamp(row.next_attempt_at)}{why if overdue else ''}")
    elif row.state in (State.UPLOADED, State.DONE, State.SKIPPED):
        if row.duplicate_of is not None:  # skipped, or being archived as a skip
            remote = shown((row.receipt or {}).get("remote_id"))
            lines.append(
                f'  skipped as a duplicate (on_duplicate = "skip"): same content '
                f"(sha256 {row.sha256}) as ledger row #{row.duplicate_of}, already "
                f"uploaded as {remote}"
            )
        else:
            lines.append(f"  uploaded to {row.destination!r} {stamp(row.uploaded_at)}, sha256 {row.sha256}")
        if row.receipt and row.duplicate_of is None:
            lines.append(f"  remote id: {shown(row.receipt.get('remote_id'))}")
        if row.state == State.UPLOADED:
            lines.append(f"  {folder.after_upload} not finished yet; the daemon finishes it")
        else:
            done = {"archive": "archived", "delete": "deleted", "keep": "kept in place"}.get(
                folder.after_upload, folder.after_upload
            )
            if row.location is not None:
                done = "archived" if folder.after_upload != "keep" else done
                lines.append(f"  {done} {stamp(row.done_at)} -> {quoted_path(row.location)}")
            else:
                lines.append(f"  {done} {stamp(row.done_at)}")
            if row.last_error and not (done == "deleted" and row.last_error == "deleted after upload"):
                # what became of the file since: deleted, rewritten in place
                lines.append(f"  then: {shown(row.last_error)}")
            elif folder.after_upload == "keep" and row.location is None and _ctime_moved(row):
                lines.append(
                    "  changed since (its inode change time moved: a write, a chmod, a rename): "
                    "the next scan compares it with the upload, and uploads other bytes"
                )
    elif row.state == State.FAILED:
        lines.append(f"  failed: {shown(row.last_error or 'no reason recorded')}")
        lines.append(f"  given up {stamp(row.updated_at)}, after {row.attempts} attempt(s)")
        if row.location:
            lines.append(f"  moved to {quoted_path(row.location)} (NAME.error.json beside it says why)")
        lines.append(f"  `syncd retry {row.id}` sends it again")
    elif row.state == State.VANISHED:
        lines.append(f"  {shown(row.last_error or 'the file disappeared before upload')}")
    elif row.state == State.FORGOTTEN:
        lines.append(f"  forgotten {stamp(row.updated_at)}: {shown(row.last_error or 'its folder left')}")
        lines.append(
            "  a file at this path now is ledgered and uploaded as a new file (the next scan finds it)"
        )
    waiting = row.state in (State.QUEUED, State.UPLOADING, State.RETRYING)
    if waiting and row.destination not in cfg.destinations:
        lines.append(
            f"  it waits for destination {row.destination!r}, which the configuration no longer has:"
            " it stays queued until that destination is configured again, or a destination's"
            " `replaces` names it"
        )
    elif waiting and row.destination != folder.destination:
        lines.append(
            f"  it goes to {row.destination!r}, the folder's destination when it was queued"
            " (a file keeps the destination it was queued for)"
        )
    if row.meta is not None and row.state in (State.UPLOADED, State.DONE, State.SKIPPED):
        lines.append(
            f"  labels {shown(str(row.meta.get('labels')))}, category {shown(str(row.meta.get('category')))}"
        )
    return lines


__all__ = ["cmd_explain", "explain", "explain_path"]


def _ctime_moved(row: Row) -> bool:
    """Whether the file a kept row stands for changed since its upload was confirmed
    (syncd/kept.py); False when it cannot tell."""
    try:
        st = os.lstat(row.inbox_path)
    except OSError:
        return False
    return row.ctime_ns is not None and st.st_ctime_ns != row.ctime_ns
