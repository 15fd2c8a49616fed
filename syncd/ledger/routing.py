"""Where waiting files go after a reload changed the destinations or the folders.

:meth:`Routing.repoint` hands the files waiting for a destination to the one
whose ``replaces`` names it; :meth:`Routing.due_now` makes the retries of a
destination whose table changed due at once (the fix an operator reloaded
for must not wait out backoffs earned before it). :meth:`Routing.retarget_settling`
gives files that are still settling their folder's destination, labels and
category as the config now has them: they were never queued for the old ones
(docs/operations.md, "Reload": a file keeps the destination it was *queued*
for). :meth:`Routing.retarget` sends one requeued file to its folder's
destination (`syncd retry` of a file whose destination is gone).
:meth:`Routing.forget_folder` retires the rows of a folder that left the
configuration for good (`syncd ledger forget`): they end ``forgotten``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from syncd.ledger.row import ACTIVE_STATES, WAITING_STATES, State, sql_in
from syncd.ledger.schedule import FOLDER_AWAY_ERROR, Schedule

FORGOTTEN_NOTE = (
    "its folder left the configuration; retired by `syncd ledger forget`, the file left where it was"
)


@dataclass(frozen=True)
class Forgotten:
    """What :meth:`Routing.forget_folder` retired (or would): rows per state they were in,
    and how many of them had their bytes outside the inbox (``location``: a failed folder).
    ``watched``: nothing was, the folder is configured (its ``unless`` said so)."""

    states: dict[str, int] = field(default_factory=dict)
    elsewhere: int = 0
    watched: bool = False

    @property
    def total(self) -> int:
        return sum(self.states.values())


class Routing(Schedule):
    def repoint(self, old: str, new: str) -> int:
        """Rows waiting for destination ``old`` (settling, queued, retrying) go to ``new``,
        due now, without ``old``'s resume state; how many (a ``replaces`` in the config)."""
        now = self._clock()
        waiting = f"destination = ? AND state IN {sql_in((State.SETTLING, *WAITING_STATES))}"
        with self._lock:  # the sweep asks every 10 s: no write transaction when none waits
            if not self._conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM files WHERE {waiting})", (old,)
            ).fetchone()[0]:
                return 0
        with self._write("repoint") as conn:
            cur = conn.execute(
                f"UPDATE files SET destination = ?, resume = NULL, updated_at = ?,"
                f" state = CASE state WHEN '{State.RETRYING}' THEN '{State.QUEUED}' ELSE state END,"
                f" next_attempt_at = CASE state WHEN '{State.SETTLING}' THEN next_attempt_at ELSE ? END,"
                f" last_error = CASE state WHEN '{State.SETTLING}' THEN last_error END"
                f" WHERE {waiting}",
                (new, now, now, old),
            )
        return cur.rowcount

    def retarget_settling(
        self, folder: str, *, destination: str, labels: Sequence[str], category: str | None
    ) -> int:
        """The settling rows of ``folder`` take its destination, labels and category as
        configured now; how many changed. No commit when none differs."""
        args = (destination, json.dumps(list(labels), ensure_ascii=False), category, folder)
        where = (
            f"folder = ? AND state = '{State.SETTLING}'"
            " AND (destination IS NOT ? OR labels IS NOT ? OR category IS NOT ?)"
        )
        with self._lock:
            if not self._conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM files WHERE {where})", (folder, *args[:3])
            ).fetchone()[0]:
                return 0
        with self._write("retarget_settling") as conn:
            return conn.execute(
                f"UPDATE files SET destination = ?, labels = ?, category = ?, updated_at = ? WHERE {where}",
                (*args[:3], self._clock(), folder, *args[:3]),
            ).rowcount

    def due_now(self, destinations: Sequence[str]) -> int:
        """Files waiting to retry on these destinations (for a reason of theirs, not an
        unavailable folder) are due now; how many. No commit when none waits."""
        if not destinations:
            return 0
        where = (
            f"state = '{State.RETRYING}' AND destination IN ({','.join('?' * len(destinations))})"
            " AND next_attempt_at > ? AND IFNULL(last_error, '') NOT LIKE ?"
        )
        now = self._clock()
        args = (*destinations, now, f"{FOLDER_AWAY_ERROR}%")
        with self._lock:
            waits = self._conn.execute(f"SELECT EXISTS (SELECT 1 FROM files WHERE {where})", args).fetchone()
        if not waits[0]:
            return 0
        with self._write("due_now") as conn:
            return conn.execute(
                f"UPDATE files SET next_attempt_at = ?, updated_at = ? WHERE {where}", (now, now, *args)
            ).rowcount

    def retarget(self, row_id: int, *, destination: str, labels: Sequence[str], category: str | None) -> bool:
        """A queued row goes to ``destination`` with these labels and category, from the
        start (`syncd retry` of a file whose destination the config no longer has)."""
        with self._write("retarget") as conn:
            return bool(
                conn.execute(
                    "UPDATE files SET destination = ?, labels = ?, category = ?, resume = NULL,"
                    f" updated_at = ? WHERE id = ? AND state = '{State.QUEUED}'",
                    (
                        destination,
                        json.dumps(list(labels), ensure_ascii=False),
                        category,
                        self._clock(),
                        row_id,
                    ),
                ).rowcount
            )

    def forget_folder(
        self,
        folder: str,
        states: Sequence[State] = ACTIVE_STATES,
        *,
        dry_run: bool = False,
        unless: Callable[[], bool] | None = None,
    ) -> Forgotten:
        """The rows of ``folder`` in ``states`` (active ones) end ``forgotten``, with a note
        and no schedule or resume state; what they were. One transaction: a worker claims
        such a row before it (then it is ``uploading``, which the caller leaves out while a
        daemon runs) or not at all, and every verb that moves a waiting row on asks for
        the state it expects, so none brings a forgotten row back. ``dry_run``: only count.

        The files are not touched. The caller makes sure the folder is not configured (nor
        in the running daemon's configuration): ``unless`` is asked inside the transaction,
        before anything changes (the configuration the running daemon records at every
        reload, a reload that configured the folder again since the caller looked); when it
        says so, nothing changes (``watched``)."""
        if not states:
            return Forgotten()
        where = f"folder = ? AND state IN {sql_in(states)}"
        count = f"SELECT state, COUNT(*), COUNT(location) FROM files WHERE {where} GROUP BY state"
        if dry_run:  # a read: a read-only ledger answers it
            with self._lock:
                found = self._conn.execute(count, (folder,)).fetchall()
        else:
            with self._write("forget_folder", durable=True) as conn:
                if unless is not None and unless():
                    return Forgotten(watched=True)
                found = conn.execute(count, (folder,)).fetchall()
                if found:
                    conn.execute(
                        f"UPDATE files SET state = '{State.FORGOTTEN}', last_error = ?,"
                        f" next_attempt_at = NULL, resume = NULL, updated_at = ? WHERE {where}",
                        (FORGOTTEN_NOTE, self._clock(), folder),
                    )
        got = {str(r[0]): int(r[1]) for r in found}
        in_order = {str(s): got[s] for s in states if s in got}  # the pipeline's order
        return Forgotten(in_order, sum(int(r[2]) for r in found))
