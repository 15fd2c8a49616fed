"""Which version of a file a row stands for.

A row is one version of a file. These verbs tell versions apart: the
versions still in their folder after their upload (``after_upload = "keep"``,
or failed in place), which scans and the settle stage must not take for new
files (:meth:`Versions.kept_versions`, :meth:`Versions.kept_version`); what a
closer look at one found (:meth:`Versions.confirm_ctimes`: the same bytes at
a new inode change time; :meth:`Versions.rewritten`: other bytes, a new
version); a file that changed during its upload (:meth:`Versions.supersede`);
a retried failed file taken as it is now (:meth:`Versions.adopt`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid as uuidlib
from collections.abc import Sequence
from typing import NamedTuple

from syncd.ledger.row import FINISHED_STATES, Row, Stat, State, sql_in
from syncd.ledger.transitions import _NEW_SETTLING, Transitions

_FINISHED = f"state IN {sql_in(FINISHED_STATES)}"  # the partial indexes' own term
# a done (or skipped) row with a note is of a file that left the inbox (deleted after its
# upload, gone before its archive, rewritten in place since): a file there now is another one
_STILL_HERE = f"NOT (state IN {sql_in((State.DONE, State.SKIPPED))} AND last_error IS NOT NULL)"
LOOKUP = 500  # paths :meth:`Versions.kept_versions` is asked for at once
_LEFT_IN_PLACE = f"(archive_path IS NULL OR state = '{State.FAILED}')"  # not archived
_COLUMNS = (
    "SELECT id, relpath, location, size, mtime_ns, inode, ctime_ns, queued_at,"
    f" state != '{State.FAILED}' AND sha256 IS NOT NULL FROM files"
)


class KeptVersion(NamedTuple):
    """A finished version of a file that is still in its folder, as a scan compares it
    with what it finds there (syncd/kept.py)."""

    id: int
    size: int | None
    mtime_ns: int | None
    inode: int | None
    ctime_ns: int | None  # when its bytes were last found the uploaded ones; None: before schema 9
    queued_at: float | None
    hashed: bool  # uploaded (or skipped): the SHA-256 of its bytes is known


def _kept(r: sqlite3.Row) -> KeptVersion:
    return KeptVersion(r[0], r[3], r[4], r[5], r[6], r[7], bool(r[8]))


class Versions(Transitions):
    """Versions of one file: those kept in the folder, and a version superseded or adopted."""

    def kept_versions(self, folder: str, relpaths: Sequence[str]) -> dict[str, KeptVersion]:
        """The files among ``relpaths`` (at most :data:`LOOKUP`) finished but still in the
        inbox (kept, or failed in place), under their own name or the one they were renamed
        to during the upload (``location`` in the folder). A done (or skipped) row with a
        note is of a file that left the inbox: a file there now is another one.

        path -> the newest such row, so scans do not mistake them for new versions. A
        scan asks for the files it walked, a batch at a time: what it holds is bounded by
        the batch, not by the kept files of the folder (every kept version of a folder
        read at once took 590 bytes of memory per file, 590 MB at a million).
        """
        inside = folder.rstrip("/") + "/"
        names = [os.fsencode(r) for r in relpaths]
        marks = ", ".join("?" * len(names))
        with self._lock:
            # two small indexes (schema 7), one look each per path
            rows = self._conn.execute(
                f"{_COLUMNS} INDEXED BY files_kept WHERE folder = ? AND relpath IN ({marks})"
                f" AND location IS NULL AND {_FINISHED} AND {_STILL_HERE}",
                (folder, *names),
            ).fetchall()
            rows += self._conn.execute(
                f"{_COLUMNS} INDEXED BY files_kept_moved WHERE location IN ({marks}) AND location IS NOT NULL"
                f" AND {_FINISHED} AND {_LEFT_IN_PLACE}"
                f" AND folder = ? AND {_STILL_HERE}",
                (*(os.fsencode(inside + r) for r in relpaths), folder),
            ).fetchall()
        rows.sort(key=lambda r: r[0])  # the newest row of a path wins
        skip = len(os.fsencode(inside))
        return {os.fsdecode(r[1] if r[2] is None else r[2][skip:]): _kept(r) for r in rows}

    def any_kept(self, folder: str) -> bool:
        """Whether any file of ``folder`` is finished but still in it (kept, failed in place,
        renamed there during its upload): a scan of a folder without one (one that
        archives its files) asks :meth:`kept_versions` nothing."""
        inside = folder.rstrip("/")
        with self._lock:
            here = self._conn.execute(
                f"SELECT 1 FROM files INDEXED BY files_kept WHERE folder = ? AND location IS NULL"
                f" AND {_FINISHED} AND {_STILL_HERE} LIMIT 1",
                (folder,),
            ).fetchone()
            if here is None:  # (the partial index's own terms, for the planner)
                here = self._conn.execute(
                    f"SELECT 1 FROM files INDEXED BY files_kept_moved WHERE location >= ? AND location < ?"
                    f" AND location IS NOT NULL AND {_FINISHED} AND {_LEFT_IN_PLACE} AND folder = ?"
                    f" AND {_STILL_HERE} LIMIT 1",
                    (os.fsencode(inside + "/"), os.fsencode(inside + "0"), folder),
                ).fetchone()
        return here is not None

    def kept_version(self, folder: str, relpath: str) -> KeptVersion | None:
        """:meth:`kept_versions` for one path: the newest finished version still at
        ``relpath``, under its own name or renamed there during its upload."""
        return self.kept_versions(folder, [relpath]).get(relpath)

    def confirm_ctimes(self, confirmed: Sequence[tuple[int, int]]) -> None:
        """Kept files found to hold their version's bytes at these inode change times
        (row id, ctime_ns): recorded, so that they are not hashed again while their inode
        stays as it is (a chmod, a chown, a rename changed it). One transaction; the rows
        are left as they were otherwise (``updated_at`` too: nothing happened to the file)."""
        if not confirmed:
            return
        with self._write("ctime") as conn:
            conn.executemany(
                f"UPDATE files SET ctime_ns = ? WHERE id = ? AND {_FINISHED}",
                [(ctime_ns, row_id) for row_id, ctime_ns in confirmed],
            )

    def rewritten(self, row_id: int, note: str) -> None:
        """The kept file of this done (or skipped) row was rewritten in place, keeping its
        size, mtime and inode: its bytes left the inbox (``note`` says how), and the file
        there now is a new version, ledgered on its own."""
        with self._write("rewritten") as conn:
            self._set(conn, row_id, last_error=note, only=(State.DONE, State.SKIPPED))

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
