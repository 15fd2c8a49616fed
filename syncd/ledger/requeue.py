"""The verbs that put rows back in the queue: after a crash, and ``syncd retry``."""

from __future__ import annotations

from collections.abc import Sequence

from syncd.ledger.row import Row, State
from syncd.ledger.schema import ACTIVE_SQL
from syncd.ledger.versions import Versions


class Requeues(Versions):
    """Rows back to ``queued``: those a crash left ``uploading``, and failed ones."""

    def requeue_stale(self) -> int:
        """At startup: uploads interrupted by a crash go back to the queue (resume kept).

        One that had confirmed parts (a resume state) gets its attempt back: it goes on
        from them, and a big file killed several times on its way (OOM, watchdog,
        power) failed on its next transient error. One without is charged: a file that
        crashes syncd every time it is sent fails after ``max_attempts`` instead of
        crashing it for ever.
        """
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE files SET state = '{State.QUEUED}', next_attempt_at = ?, updated_at = ?,"
                " attempts = CASE WHEN resume IS NULL THEN attempts ELSE MAX(attempts - 1, 0) END"
                f" WHERE state = '{State.UPLOADING}'",
                (now, now),
            )
        return cur.rowcount

    def requeue_failed(self, ids: Sequence[int] | None = None) -> list[Row]:
        """``syncd retry``: failed rows (all, or these ids) go back to the queue.

        The bytes stay where they are (usually failed_dir) and are uploaded
        from there; ``attempts`` starts again from zero. Returns the rows
        requeued: a row that failed in place (no failed_dir) is left failed
        while its path has an active row, a newer version of the file, which is
        what that path holds now.
        """
        now = self._clock()
        requeued: list[int] = []
        with self._write("requeue_failed", durable=True) as conn:
            if ids is None:
                found = conn.execute(f"SELECT id FROM files WHERE state = '{State.FAILED}'").fetchall()
                targets = [r[0] for r in found]
            else:
                targets = list(ids)
            for row_id in sorted(targets, reverse=True):  # of versions failed in place: the newest
                cur = conn.execute(
                    f"UPDATE files SET state = '{State.QUEUED}', attempts = 0, next_attempt_at = ?,"
                    " updated_at = ?, last_error = NULL, archive_path = NULL"
                    f" WHERE id = ? AND state = '{State.FAILED}' AND NOT (location IS NULL AND EXISTS"
                    " (SELECT 1 FROM files AS newer INDEXED BY files_path WHERE newer.folder = files.folder"
                    " AND newer.relpath = files.relpath AND newer.location IS NULL"
                    f" AND newer.state IN {ACTIVE_SQL}))",
                    (now, now, row_id),
                )
                if cur.rowcount:
                    requeued.append(row_id)
        return [r for r in (self.get(i) for i in sorted(requeued)) if r is not None]
