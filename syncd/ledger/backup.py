"""``syncd ledger backup``: a consistent copy of the ledger, also while the daemon writes.

Never copy ``ledger.sqlite3`` with ``cp``: its ``-wal`` file holds the latest commits.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import LedgerError, LedgerUnreachable
from syncd.ledger import schema
from syncd.ledger.schema import make_private


@dataclass(frozen=True)
class Backup:
    """What :func:`backup` made."""

    path: Path  # the copy: the destination, or ``NAME.partial`` if it failed its check
    integrity: str  # "ok", or what SQLite's integrity check found in the copy
    rows: int  # rows in the copy (0 if it failed its check)

    @property
    def ok(self) -> bool:
        return self.integrity == "ok"


def backup(path: Path, dest: Path) -> Backup:
    """Copy the ledger at ``path`` to ``dest`` with SQLite's online backup API.

    One step, so one consistent snapshot even while another process writes.
    The copy is written as ``dest.partial`` (0600 before SQLite writes a byte),
    checked with ``PRAGMA integrity_check``, and renamed to ``dest`` only if it
    passed; otherwise it stays at ``dest.partial`` (:attr:`Backup.ok` false).

    Raises :class:`FileExistsError` if ``dest`` exists, :class:`LedgerError` if
    there is no ledger at ``path`` or SQLite cannot copy it.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} exists")
    if not path.exists():
        raise LedgerUnreachable(f"no ledger at {path} (has syncd run with this config?)")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(schema.uri(path, "mode=ro"), uri=True, timeout=30)
    try:
        make_private(partial)  # its journal copies the mode
        target = sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise LedgerError(f"cannot back up {path}: {exc}") from None
    finally:
        source.close()
    # a look of SQLite's own, whatever the copy's schema version (no migration, no check
    # that the read-only views could read it: an older syncd's ledger is backed up too)
    copy = sqlite3.connect(schema.uri(partial, "mode=ro"), uri=True)
    try:
        result = "; ".join(r[0] for r in copy.execute("PRAGMA integrity_check").fetchall())
        rows = int(copy.execute("SELECT COUNT(*) FROM files").fetchone()[0]) if result == "ok" else 0
    except sqlite3.DatabaseError as exc:
        result, rows = str(exc), 0
    finally:
        copy.close()
        for leftover in ("-wal", "-shm"):  # the look's, empty: the copy is whole without them
            Path(f"{partial}{leftover}").unlink(missing_ok=True)
    if result != "ok":
        return Backup(partial, result, 0)
    os.replace(partial, dest)
    return Backup(dest, result, rows)
