"""What the ledger answers without changing anything: rows by id, path, state or
location; what is due; counts; recent errors; the key/value table."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from syncd.ledger.row import (
    SETTLED_ACTIVE_STATES,
    STATES,
    WAITING_STATES,
    Row,
    State,
    sql_in,
)
from syncd.ledger.schema import ACTIVE_SQL, ERROR_STATES_SQL
from syncd.ledger.writer import Writer


class Queries(Writer):
    """The read-only questions (the verbs that write build on them: :class:`Transitions`)."""

    # ------------------------------------------------------------- by row or path

    def get(self, row_id: int) -> Row | None:
        rows = self._query("SELECT * FROM files WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def latest_for_path(self, folder: str, relpath: str) -> Row | None:
        """The newest row for an inbox path, whatever its state."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND relpath = ? ORDER BY id DESC LIMIT 1",
            (folder, os.fsencode(relpath)),
        )
        return rows[0] if rows else None

    def at_location(self, folder: str, path: str) -> Row | None:
        """The newest row of ``folder`` whose bytes are at ``path`` (archived or moved to
        failed_dir), or planned to go there; for `syncd explain` on such a path."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND (location = ? OR archive_path = ?)"
            " ORDER BY id DESC LIMIT 1",
            (folder, os.fsencode(path), os.fsencode(path)),
        )
        return rows[0] if rows else None

    def previous_done(self, row: Row) -> Row | None:
        """The newest older row for the same inbox path whose file was uploaded (or skipped)
        and left the inbox or was kept."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND relpath = ? AND id < ?"
            f" AND state IN ('{State.DONE}', '{State.SKIPPED}') ORDER BY id DESC LIMIT 1",
            (row.folder, os.fsencode(row.relpath), row.id),
        )
        return rows[0] if rows else None

    def active_for_path(self, folder: str, relpath: str) -> Row | None:
        rows = self._query(
            f"SELECT * FROM files WHERE folder = ? AND relpath = ? AND location IS NULL"
            f" AND state IN {ACTIVE_SQL} LIMIT 1",
            (folder, os.fsencode(relpath)),
        )
        return rows[0] if rows else None

    def active_paths(self, folder: str, under: str = "") -> set[str]:
        """Relative paths in ``folder`` (below the sub-folder ``under``) that have an
        active row (for scans)."""
        below, args = _below("relpath", under)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT relpath FROM files WHERE folder = ? AND location IS NULL AND state IN {ACTIVE_SQL}"
                f" AND {below}",
                (folder, *args),
            ).fetchall()
        return {os.fsdecode(r[0]) for r in rows}

    def uploaded_copy(
        self, folder: str, sha256: str, *, destination: str, exclude: int | None = None
    ) -> Row | None:
        """The oldest row of ``folder`` whose upload of these bytes to ``destination``
        was confirmed (``uploaded`` or ``done``, not itself a skipped duplicate)."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND sha256 = ? AND destination = ?"
            f" AND state IN {sql_in((State.UPLOADED, State.DONE))} AND duplicate_of IS NULL"
            " AND receipt IS NOT NULL AND id != ? ORDER BY id LIMIT 1",
            (folder, sha256, destination, -1 if exclude is None else exclude),
        )
        return rows[0] if rows else None

    def inode_busy(self, row: Row) -> list[Row]:
        """The other rows of the same folder and inode that are queued or further along
        (a few at most).

        A file renamed during its upload shows up again at its new path; that
        new row must wait until the upload of the same bytes has finished.
        """
        return self._query(
            "SELECT * FROM files WHERE folder = ? AND inode = ? AND id != ?"
            f" AND state IN {sql_in(SETTLED_ACTIVE_STATES)} LIMIT 16",  # files_inode answers it
            (row.folder, row.inode, row.id),
        )

    # ------------------------------------------------------------ by state

    def rows(
        self,
        *,
        state: str | None = None,
        folder: str | None = None,
        limit: int | None = None,
        newest: bool = False,
        after: int | None = None,
        before: int | None = None,
    ) -> list[Row]:
        """Rows in id order (oldest first), optionally of one state and folder.

        ``limit``: at most this many, the oldest ones, or with ``newest`` the newest
        ones (still returned oldest first). ``after``/``before``: only ids above/below
        this one, to page on from the last/first row of a page.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        where: list[str] = []
        args: list[Any] = []
        for term, value in (
            ("state = ?", state),
            ("folder = ?", folder),
            ("id > ?", after),
            ("id < ?", before),
        ):
            if value is not None:
                where.append(term)
                args.append(value)
        sql = "SELECT * FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if newest else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        found = self._query(sql, args)
        return found[::-1] if newest else found

    def in_state(self, *states: str) -> list[Row]:
        marks = ", ".join("?" * len(states))
        return self._query(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states)

    def settling(self) -> list[Row]:
        """Every row waiting to be judged finished, oldest first."""
        return self._query(f"SELECT * FROM files WHERE state = '{State.SETTLING}' ORDER BY id")

    def settling_ids(self) -> set[int]:
        with self._lock:
            return {
                r[0] for r in self._conn.execute(f"SELECT id FROM files WHERE state = '{State.SETTLING}'")
            }

    def settling_due(self, now: float, limit: int) -> list[Row]:
        """Settling rows whose next look is due at ``now``, the most overdue first, at most ``limit``."""
        return self._query(
            f"SELECT * FROM files INDEXED BY files_settle_due WHERE state = '{State.SETTLING}'"
            " AND due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )

    def _earliest(self, column: str, where: str, args: Sequence[Any] = ()) -> float | None:
        """``MIN(column)`` over the rows ``where`` selects (wall clock), None when none."""
        with self._lock:
            r = self._conn.execute(f"SELECT MIN({column}) FROM files WHERE {where}", args).fetchone()
        return None if r is None or r[0] is None else float(r[0])

    def next_settle_due(self) -> float | None:
        """When the next settling row is due a look (None: nothing settles)."""
        return self._earliest("due_at", f"state = '{State.SETTLING}'")

    def first_retry(self, folders: list[str]) -> float | None:
        """When the earliest retrying row of these folders is due (wall clock)."""
        marks = ", ".join("?" * len(folders))
        where = f"state = '{State.RETRYING}' AND folder IN ({marks})"
        return self._earliest("next_attempt_at", where, folders)

    def next_due(self) -> float | None:
        """When the earliest waiting queued/retrying row becomes due (wall clock)."""
        return self._earliest("next_attempt_at", f"state IN {sql_in(WAITING_STATES)}")

    def waiting_elsewhere(self, destinations: list[str]) -> dict[str, int]:
        """Waiting (queued or retrying) rows per destination that is not in ``destinations``:
        rows no worker claims, because the config no longer has their destination."""
        marks = ", ".join("?" * len(destinations))
        with self._lock:
            found = self._conn.execute(
                f"SELECT destination, COUNT(*) FROM files WHERE state IN {sql_in(WAITING_STATES)}"
                f" AND destination NOT IN ({marks}) GROUP BY destination ORDER BY destination",
                destinations,
            ).fetchall()
        return {str(d): int(n) for d, n in found}

    # ---------------------------------------------------------------- status

    def counts(self) -> dict[str, int]:
        """Rows per state (every state present, 0 when none): from the maintained counters."""
        with self._lock:
            found = self._conn.execute("SELECT state, SUM(n) FROM counts GROUP BY state").fetchall()
        out = {s: 0 for s in STATES}
        out.update({r[0]: r[1] for r in found if r[1]})
        return out

    def counts_by_folder(self) -> dict[str, dict[str, int]]:
        """Rows per folder and state (only states with rows): from the maintained counters."""
        with self._lock:
            found = self._conn.execute("SELECT folder, state, n FROM counts WHERE n > 0").fetchall()
        out: dict[str, dict[str, int]] = {}
        for folder, state, n in found:
            out.setdefault(folder, {})[state] = n
        return out

    def recent_errors(self, limit: int = 10) -> list[Row]:
        """The newest rows with an error that still matters (the partial index answers it)."""
        return self._query(
            # the planner would pick files_state and sort every matching row
            f"SELECT * FROM files INDEXED BY files_errors WHERE last_error IS NOT NULL"
            f" AND state IN {ERROR_STATES_SQL}"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    def done_today(self) -> int:
        """Files done since local midnight, from the per-day counter."""
        with self._lock:
            r = self._conn.execute("SELECT n FROM done_days WHERE day = date('now', 'localtime')").fetchone()
        return int(r[0]) if r else 0

    def done_since(self, since: float) -> int:
        with self._lock:
            r = self._conn.execute(
                f"SELECT COUNT(*) FROM files WHERE state = '{State.DONE}' AND done_at >= ?", (since,)
            ).fetchone()
        return int(r[0])

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    # -------------------------------------------------------------- key/value

    def schema_version(self) -> int:
        """The ledger's schema version as it is on disk: below the current one in a ledger
        opened read-only that a running syncd of an earlier version still uses."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            r = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])


def _below(column: str, under: str, prefix: bytes = b"") -> tuple[str, tuple[bytes, ...]]:
    """SQL that keeps the rows whose ``column`` lies below ``prefix`` + the sub-folder
    ``under`` ("" and no prefix: every row), and its arguments: ``P/`` up to ``P0``,
    since "0" follows "/" (``prefix`` ends with "/")."""
    rel = under.strip("/")
    if not rel and not prefix:
        return "1", ()
    low = prefix + os.fsencode(rel + "/") if rel else prefix
    return f"{column} >= ? AND {column} < ?", (low, low[:-1] + b"0")
