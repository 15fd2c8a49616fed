"""How long the ledger keeps the rows of files it is done with (``[daemon] keep_done_days``).

:meth:`Retention.prune` deletes rows of files whose bytes left the inbox
(:data:`PRUNED_STATES` with a location: archived, or skipped as a duplicate
and archived) and of vanished files, done before a cutoff. Rows of files
left in place (``after_upload = "keep"`` or ``"delete"``, failed without a
failed folder) are kept: the settle stage recognises a kept file by its row,
and would upload it again without one. Failed rows are kept for ``syncd
retry``.

Each call reads the next ``limit`` rows of one state in id order, from a
cursor the caller keeps (the id it returned last time), and deletes those
old enough: its cost is the same whatever the size of the ledger, and it
needs no index of its own. The cursor wraps around at the end, so a row is
deleted at the latest one pass after its time has come. A row that recorded
a metadata sidecar its file left in the inbox (:mod:`syncd.left_sidecars`)
is kept: it is what keeps that sidecar from a later file of the name. The triggers keep
the per-state counts as rows go; the per-day done counts (``syncd status``:
done today) are history and stay as they were.
"""

from __future__ import annotations

from syncd.ledger.routing import Routing
from syncd.ledger.row import State

# the key syncd.left_sidecars records in a row's meta, as json.dumps writes it
LEFT_SIDECAR_KEY = '"left_sidecar": {'
PRUNED_STATES: tuple[State, ...] = (State.DONE, State.SKIPPED, State.VANISHED)


class Retention(Routing):
    def prune(self, state: State, cutoff: float, *, after: int, limit: int) -> tuple[int, int]:
        """Delete, among the next ``limit`` rows of ``state`` after id ``after``, those done
        before ``cutoff`` whose file left the inbox; returns how many, and the cursor for the
        next call (0 after the last row)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._conn.execute(
                    "SELECT id FROM files INDEXED BY files_state_id WHERE state = ? AND id > ?"
                    " ORDER BY id LIMIT ?",
                    (state, after, limit),
                )
            ]
        if not ids:
            return 0, 0
        old = (
            f"id IN ({', '.join('?' * len(ids))}) AND state = ?"
            " AND COALESCE(done_at, updated_at) < ? AND ((location IS NOT NULL"
            # a file kept under the name it was renamed to during its upload is still in the
            # inbox: its row is how scans know it (Versions.kept_versions)
            " AND substr(location, 1, length(CAST(folder AS BLOB)) + 1) != CAST(folder || '/' AS BLOB))"
            " OR state = ?)"
            # a row that recorded the metadata sidecar its file left in the inbox stays: it is
            # how a later file of that name is kept from taking that sidecar (left_sidecars)
            f" AND (meta IS NULL OR instr(meta, '{LEFT_SIDECAR_KEY}') = 0)"
        )
        args = (*ids, state, cutoff, State.VANISHED)
        with self._write("prune") as conn:
            # The delete trigger takes each done row off its day in done_days, which is
            # history (files done that day), not what the ledger holds: put them back first.
            conn.execute(
                "INSERT INTO done_days (day, n) SELECT date(done_at, 'unixepoch', 'localtime'), COUNT(*)"
                f" FROM files WHERE {old} AND state = '{State.DONE}' AND done_at IS NOT NULL GROUP BY 1"
                " ON CONFLICT (day) DO UPDATE SET n = n + excluded.n",
                args,
            )
            deleted = conn.execute(f"DELETE FROM files WHERE {old}", args).rowcount
        return deleted, ids[-1] if len(ids) == limit else 0
