"""``syncd ledger rebuild``: a new ledger, with the rows the damaged one can still give.

:func:`rebuild` moves the ledger (and its WAL and index) aside as
``ledger.sqlite3.broken-STAMP``, where the operator can still look at it,
and starts a new one. A ledger that fails ``quick_check`` is usually damaged
in a few pages, and most of its rows can still be read: :func:`salvage`
copies into the new ledger every row it can read of a file whose story is
over (:data:`KEPT_STATES`):

* done and skipped: where the bytes went (the receipt) and where the local
  copy is (the archive), so ``syncd status``, ``syncd files`` and ``syncd
  explain`` go on knowing them, and a kept file (``after_upload = "keep"``)
  is still recognised and not uploaded again;
* failed: the copy in the failed folder and why, so ``syncd retry`` still
  works;
* vanished, and forgotten (``syncd ledger forget``: its folder left the configuration);
* uploaded: the confirmed upload, so the next start finishes its archive
  move instead of uploading the file again (its link into the archive may
  be made already, and its inbox name gone);
* any row whose bytes are not at its inbox path (``location`` set: a file
  ``syncd retry`` put back in the queue from the failed folder, one renamed
  during its upload), since no scan of the inbox would find them.

Other rows of files still on their way (settling, queued, uploading,
retrying) are left out: their files are in the inbox, and the next start
ledgers them afresh.

Rows are read by id ranges, each twice: through the table's own rowid tree
and through the state index, since either may be the damaged part; a range
that fails is halved down to single ids, so an unreadable page costs the
rows on it, not the rest. The damaged file is
opened read-only, with its WAL, or as an immutable file (without it) if that
fails.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import durable
from syncd.ledger import schema
from syncd.ledger.row import State
from syncd.ledger.transitions import Transitions
from syncd.ledger.writer import REBUILDING

if TYPE_CHECKING:
    from syncd.ledger import Ledger

KEPT_STATES: tuple[State, ...] = (
    State.DONE,
    State.SKIPPED,
    State.FAILED,
    State.VANISHED,
    State.FORGOTTEN,
    State.UPLOADED,
)
CHUNK = 1000  # ids read per query while nothing fails


@dataclass
class Salvaged:
    """What :func:`salvage` copied (rows per state), how many ids it could not read, and
    why nothing could be read at all (None if something could)."""

    copied: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"nothing could be read from the damaged ledger ({self.error})"
        kinds = ", ".join(f"{n} {state}" for state, n in sorted(self.copied.items())) or "none"
        lost = f"; {self.unreadable} id(s) could not be read" if self.unreadable else ""
        return f"copied {sum(self.copied.values())} row(s) from the damaged ledger ({kinds}){lost}"


def _open(broken: Path) -> sqlite3.Connection:
    """The damaged ledger, read-only: with its WAL if SQLite can, else the file alone."""
    last: sqlite3.DatabaseError | None = None
    for query in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(schema.uri(broken, query), uri=True, isolation_level=None)
            conn.execute("SELECT id FROM files LIMIT 1").fetchall()
            return conn
        except sqlite3.DatabaseError as exc:
            last = exc
    assert last is not None
    raise last


def salvage(broken: Path, ledger: Transitions) -> Salvaged:
    """Copy the finished rows that can be read from the damaged ledger ``broken`` into the
    new, empty ``ledger`` (see the module docstring)."""
    result = Salvaged()
    try:
        src = _open(broken)
    except sqlite3.DatabaseError as exc:
        result.error = str(exc)
        return result
    try:
        theirs = [r[1] for r in src.execute("PRAGMA table_info(files)")]
        ours = {r[1] for r in ledger._conn.execute("PRAGMA table_info(files)")}
        columns = [c for c in theirs if c in ours]
        lo, hi = src.execute("SELECT MIN(id), MAX(id) FROM files NOT INDEXED").fetchone()
    except sqlite3.DatabaseError as exc:
        src.close()
        result.error = str(exc)
        return result
    # Each range is read through the table's own rowid tree (NOT INDEXED) and
    # as the planner likes (the state index). A damaged index hides rows from the second, a damaged table
    # page can hide rows from the first without an error; a row either finds is copied.
    marks = ", ".join("?" * len(KEPT_STATES))
    cols = ", ".join(columns)
    kept = f"WHERE id BETWEEN ? AND ? AND state IN ({marks})"
    queries: list[tuple[str, tuple[Any, ...]]] = [
        (f"SELECT {cols} FROM files NOT INDEXED {kept}", KEPT_STATES),
        (f"SELECT {cols} FROM files {kept}", KEPT_STATES),  # through the state index
        # the rows whose bytes are elsewhere, in any state (no index holds location)
        (f"SELECT {cols} FROM files NOT INDEXED WHERE id BETWEEN ? AND ? AND location IS NOT NULL", ()),
    ]
    id_at = columns.index("id")

    def read(first: int, last: int) -> list[tuple[Any, ...]]:
        """The kept rows between these ids that either read finds; an id that failed to
        read alone in one and was not found by the other counts as unreadable."""
        found: dict[int, tuple[Any, ...]] = {}
        failed: set[int] = set()
        for query in queries:
            found.update((r[id_at], r) for r in _read(query, first, last, failed))
        result.unreadable += len(failed - found.keys())
        return [found[i] for i in sorted(found)]

    def _read(
        query: tuple[str, tuple[Any, ...]], first: int, last: int, failed: set[int]
    ) -> list[tuple[Any, ...]]:
        try:
            return src.execute(query[0], (first, last, *query[1])).fetchall()
        except sqlite3.DatabaseError:
            if first == last:
                failed.add(first)
                return []
            middle = (first + last) // 2
            return _read(query, first, middle, failed) + _read(query, middle + 1, last, failed)

    def next_id(after: int) -> int | None:
        """The first id above ``after`` (a damaged MAX(id) may lie far beyond the rows),
        or ``after + 1`` when the table cannot say."""
        try:
            found = src.execute("SELECT MIN(id) FROM files NOT INDEXED WHERE id > ?", (after,)).fetchone()
        except sqlite3.DatabaseError:
            return after + 1
        return None if found[0] is None else int(found[0])

    # OR IGNORE: a row damaged in a way that still reads (a NULL where none may be, a
    # repeated uuid) is left out, not the end of the rebuild
    insert = f"INSERT OR IGNORE INTO files ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    state_at = columns.index("state")
    start: int | None = lo
    try:
        while start is not None and hi is not None and start <= hi:
            end = min(start + CHUNK - 1, hi)
            rows = read(start, end)
            if rows:
                with ledger._write("salvage") as conn:
                    for row in rows:
                        if conn.execute(insert, row).rowcount:
                            result.copied[str(row[state_at])] += 1
                start = end + 1
            else:
                start = next_id(end)
    finally:
        src.close()
    return result


@dataclass
class Rebuilt:
    moved: list[Path]  # the damaged ledger's files, moved aside
    salvaged: Salvaged | None  # None: there was no ledger to read
    resumed: Path | None = None  # an interrupted rebuild's damaged ledger, salvaged again


def rebuilding_marker(path: Path) -> Path:
    """The file that says a rebuild of the ledger at ``path`` is under way (it names the
    damaged ledger it salvages from): while it exists the ledger at ``path`` is partial."""
    return Path(f"{path}{REBUILDING}")


def rebuild(path: Path, stamp: str, opener: type[Ledger]) -> Rebuilt:
    """Move the ledger at ``path`` aside (``PATH.broken-STAMP``, 0600), open a new one
    with ``opener`` and salvage what the old one can give. The caller holds the state
    lock (no daemon runs).

    A rebuild killed half-way left a partial ledger, which the next rebuild took for
    the damaged one (salvaging nothing) and a daemon started on (uploading again the
    kept files whose rows were not copied yet). So the marker
    (:func:`rebuilding_marker`) is written first and removed last: while it exists,
    the ledger does not open for the daemon, and the next rebuild starts again from
    the damaged ledger it names, dropping the partial one.
    """
    marker = rebuilding_marker(path)
    named = _named_in(marker, path)
    resumed = named is not None
    broken = named or Path(f"{path}.broken-{stamp}")
    if not resumed:  # no marker, or one cut short as it was written: nothing was moved yet
        durable.replace(marker, str(broken), mode=0o600)
    if resumed and broken.exists() and path.exists():
        # the new ledger is made only once every file of the old one was moved aside:
        # what is at the path is the interrupted rebuild's partial ledger
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    moved: list[Path] = []
    for suffix in ("", "-wal", "-shm"):  # the damaged ledger's files (the rest of them, resumed)
        p, target = Path(f"{path}{suffix}"), Path(f"{broken}{suffix}")
        if p.exists() and not target.exists():
            os.replace(p, target)
            os.chmod(target, 0o600)  # a ledger's content, the owner's only
            moved.append(target)
    durable.fsync_dir(path.parent)
    ledger = opener.open(path, rebuilding=True)
    try:
        salvaged = salvage(broken, ledger) if broken.exists() else None
        ledger.sync()
    finally:
        ledger.close()
    marker.unlink()
    durable.fsync_dir(path.parent)
    return Rebuilt(moved, salvaged, broken if resumed else None)


def _named_in(marker: Path, path: Path) -> Path | None:
    """The damaged ledger a rebuild's marker names: ``PATH.broken-STAMP`` beside ``path``;
    None without a marker, or with one that names nothing such (never trusted further)."""
    try:
        named = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    ok = named.startswith(f"{path}.broken-") and "/" not in named[len(str(path)) :]
    return Path(named) if ok else None
