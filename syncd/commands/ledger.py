"""``syncd ledger check | backup DEST | rebuild | forget``: the ledger's own commands.

``check`` runs SQLite's integrity check; ``backup`` copies the ledger with
SQLite's backup API and checks the copy (:func:`syncd.ledger.backup`);
``rebuild`` moves a damaged ledger aside and salvages what it can still give
(:mod:`syncd.ledger.salvage`), holding the state directory's lock; a ledger that
passes its integrity check is left alone without ``--force``. ``forget`` retires the
waiting files of a folder the configuration no longer has (:mod:`syncd.commands.forget`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_LEDGER, EXIT_OK
from syncd.commands.common import load as _load
from syncd.commands.forget import cmd_forget
from syncd.config import FolderConfig
from syncd.errors import LedgerError, LedgerUnreachable
from syncd.ledger import Ledger, backup
from syncd.ledger.salvage import rebuild, rebuilding_marker


def cmd_ledger(args: argparse.Namespace) -> int:
    from syncd.daemon import ledger_path
    from syncd.lock import StateLock

    if args.ledger_command == "forget":
        return cmd_forget(args)
    cfg = _load(args, secrets=False)
    path = ledger_path(cfg)
    if args.ledger_command == "check":
        ledger = Ledger.open(path, readonly=True)
        try:
            result = ledger.integrity_check()
        finally:
            ledger.close()
        print(f"{path}: {result}")
        return EXIT_OK if result == "ok" else EXIT_LEDGER
    if args.ledger_command == "backup":
        return _backup_ledger(path, args.dest, cfg.folders)
    with StateLock(Path(cfg.daemon.state_dir)):
        try:
            healthy = _healthy(path)
        except LedgerUnreachable as exc:  # fine, but out of reach now: nothing to rebuild
            print(f"syncd: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if not args.force and healthy:
            print(
                f"syncd: the ledger {path} passes its integrity check: nothing to rebuild (a rebuild "
                "keeps only the rows of finished files; run `syncd ledger rebuild --force` to do it "
                "anyway)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        rebuilt = rebuild(path, time.strftime("%Y%m%d-%H%M%S"), Ledger)
    if rebuilt.resumed is not None:
        print(
            f"an interrupted rebuild was started over from {rebuilt.resumed.name} "
            "(its partial ledger dropped)"
        )
    for m in rebuilt.moved:
        print(f"moved {m.name} aside")
    if rebuilt.salvaged is not None:
        print(rebuilt.salvaged.describe())
    print(f"new ledger at {path}; files still in the folders will be uploaded at the next start")
    return EXIT_OK


def _backup_ledger(path: Path, given: str, folders: Sequence[FolderConfig] = ()) -> int:
    dest = Path(given)  # (which drops a trailing slash: looked at in ``given``)
    if given == "-" or given.endswith("/") or dest.is_dir():
        print(
            f"syncd: {dest} is not a file name: give the backup's own name (a new file)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    where = dest.resolve()
    for folder in folders:
        if where.is_relative_to(folder.path):
            print(
                f"syncd: {dest} lies inside the watched folder {folder.path}: the ledger would be "
                f"uploaded to {folder.destination!r} and archived; back it up elsewhere",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    try:
        copy = backup(path, dest)
    except FileExistsError:
        print(f"syncd: {dest} exists; choose a new name", file=sys.stderr)
        return EXIT_CONFIG
    if not copy.ok:
        print(
            f"syncd: the copy failed its integrity check ({copy.integrity}); kept as {copy.path}",
            file=sys.stderr,
        )
        return EXIT_LEDGER
    print(f"backed up {path} to {dest} ({copy.rows} rows, integrity ok)")
    return EXIT_OK


def _healthy(path: Path) -> bool:
    """Whether the ledger at ``path`` opens and passes SQLite's integrity check (and no
    interrupted rebuild left it partial)."""
    if not path.exists() or rebuilding_marker(path).exists():
        return False
    try:
        ledger = Ledger.open(path, readonly=True)
    except LedgerUnreachable:
        raise
    except LedgerError:
        return False
    try:
        return ledger.integrity_check() == "ok"
    except sqlite3.DatabaseError:
        return False
    finally:
        ledger.close()
