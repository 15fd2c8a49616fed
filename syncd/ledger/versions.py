"""Which version of a file a row stands for.

A row is one version of a file. These verbs tell versions apart: the
versions still in their folder after their upload (``after_upload = "keep"``,
or failed in place), which scans must not take for new files
(:meth:`Versions.done_versions`); a file that changed during its upload
(:meth:`Versions.supersede`); a retried failed file taken as it is now
(:meth:`Versions.adopt`).
"""

from __future__ import annotations

import json
import os
import uuid as uuidlib

from syncd.ledger.queries import _below
from syncd.ledger.row import FINISHED_STATES, Row, Stat, State, sql_in
from syncd.ledger.transitions import _NEW_SETTLING, Transitions


class Versions(Transitions):
    """Versions of one file: those kept in the folder, and a version superseded or adopted."""

    def done_versions(
        self, folder: str, under: str = ""
    ) -> dict[str, tuple[int | None, int | None, int | None]]:
        """Files finished but still in the inbox (kept, or failed in place), under their
        own name or the one they were renamed to during the upload (``location`` in the
        folder); below the sub-folder ``under`` only, when given (a scan of a new
        directory reads its own rows, not the folder's). A done (or skipped) row with a note is of a
        file that left the inbox (deleted after its upload, gone before its archive): a
        file there now is another one.

        path -> (size, mtime_ns, inode) of the newest such row, so scans do
        not mistake them for new versions.
        """
        inside = os.fsencode(folder.rstrip("/") + "/")
        below, args = _below("relpath", under)
        moved, moved_args = _below("location", under, inside)
        finished = f"state IN {sql_in(FINISHED_STATES)}"
        columns = "SELECT id, relpath, size, mtime_ns, inode, location FROM files"
        still_here = f"NOT (state IN {sql_in((State.DONE, State.SKIPPED))} AND last_error IS NOT NULL)"
        with self._lock:
            # two small indexes (schema 7) instead of every finished row of the folder
            rows = self._conn.execute(
                f"{columns} INDEXED BY files_kept WHERE folder = ? AND location IS NULL AND {finished}"
                f" AND {below} AND {still_here}",
                (folder, *args),
            ).fetchall()
            rows += self._conn.execute(
                f"{columns} INDEXED BY files_kept_moved WHERE {moved} AND location IS NOT NULL"
                f" AND {finished} AND (archive_path IS NULL OR state = '{State.FAILED}')"
                f" AND folder = ? AND {still_here}",
                (*moved_args, folder),
            ).fetchall()
        rows.sort(key=lambda r: r[0])  # the newest row of a path wins
        return {os.fsdecode(r[1] if r[5] is None else r[5][len(inside) :]): (r[2], r[3], r[4]) for r in rows}

    def adopt(self, row_id: int, st: Stat) -> None:
        """A retried failed file is uploaded as it is now (:func:`syncd.upload_source.adopt_failed`):
        from the start, since the parts a service holds are of other bytes."""
        self._update(
            "adopt", row_id, size=st.size, mtime_ns=st.mtime_ns, inode=st.inode, device=st.device, resume=None
        )

    def supersede(self, row: Row, *, reason: str) -> None:
        """The file changed during upload: retire ``row`` and start a new settling version."""
        now = self._clock()
        with self._write() as conn:
            self._set(
                conn, row.id, state=State.VANISHED, last_error=reason, resume=None, next_attempt_at=None
            )
            if row.location is None:
                conn.execute(
                    _NEW_SETTLING,
                    (
                        str(uuidlib.uuid4()),
                        row.folder,
                        os.fsencode(row.relpath),
                        row.destination,
                        json.dumps(list(row.labels), ensure_ascii=False),
                        row.category,
                        now,
                        now,
                        now,
                        now,
                    ),
                )
