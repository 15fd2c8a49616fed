"""Due times that a stepped-back system clock left in the future, brought back.

A row's schedule is wall-clock seconds (``next_attempt_at``, ``due_at``,
``changed_at``): it must survive a restart, and ``syncd status`` shows it.
When the system clock is stepped back (an NTP correction, a host that booted
with its clock hours or years ahead, a VM restored from a snapshot), every
time written before the step lies that much further ahead, and a file would
wait for the length of the step: an hour, or until 2038.
:meth:`Schedule.rein_in` finds such times, through the indexes the stages
already use, and brings each back:

* a queued row is due from when it was queued, never later: due now;
* a retrying row written "in the future" (``updated_at`` ahead of the clock:
  it was written before the step) keeps the wait it was given, counted from
  now: ``next_attempt_at - updated_at``, both set by the same commit;
* no waiting row is due further ahead than ``horizon``, the longest wait
  syncd ever schedules (the caller knows it: ``retry_max_seconds`` and the
  like);
* a settling row due further ahead than ``settle_horizon`` (the longest
  quiet time of any folder) is looked at now, and a last change or a first
  sighting in the future becomes now, so its quiet time starts again.

A clock stepped forward needs none of this: what was due later is due sooner
(docs/guarantees.md, F22). Nothing here can delay a row; each update only
brings a time closer, so running it while workers write is safe, and a
sweep that finds nothing costs four index lookups.

The quiet times of settling files are kept exactly, in both directions, by
:meth:`Schedule.shift_settling`, which the settle stage runs when it sees the
clock stepped (:mod:`syncd.clock_steps`); :meth:`Schedule.rein_in` covers
what it cannot see: a step while syncd was stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.ledger.requeue import Requeues
from syncd.ledger.row import State

FOLDER_AWAY_ERROR = "folder unavailable"  # how the retry policy's reason for such a wait begins
SLACK = 1.0  # seconds: a time this little ahead of the clock is another thread's, not a step


@dataclass(frozen=True)
class Reined:
    """How many rows :meth:`Schedule.rein_in` brought back, by state."""

    queued: int = 0
    retrying: int = 0
    settling: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.retrying + self.settling


# What to look for, each with the index that finds it (named: without statistics the
# planner would rather read every row of the state).
_QUEUED_AHEAD = ("files_state", f"state = '{State.QUEUED}' AND next_attempt_at > :ahead")
_WRITTEN_AHEAD = (  # the files_errors index's own predicate, then the condition
    "files_errors",
    "last_error IS NOT NULL AND state IN ('retrying','failed','queued','uploading')"
    f" AND state = '{State.RETRYING}' AND updated_at > :ahead",
)
_BEYOND_HORIZON = ("files_state", f"state = '{State.RETRYING}' AND next_attempt_at > :beyond")
_SETTLING_AHEAD = ("files_settle_due", f"state = '{State.SETTLING}' AND due_at > :settle_beyond")


def _any(*rows: tuple[str, str]) -> str:
    """A ``SELECT`` of whether any of these (index, condition) finds a row."""
    return "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM files INDEXED BY {i} WHERE {w})" for i, w in rows)


def _update(rows: tuple[str, str], assignments: str) -> str:
    index, where = rows
    return f"UPDATE files INDEXED BY {index} SET {assignments} WHERE {where}"


class Schedule(Requeues):
    def rein_in(self, horizon: float, settle_horizon: float) -> Reined:
        """Bring due times that lie beyond what syncd schedules back into reach (see the
        module docstring); returns how many rows of each state were changed. Writes
        nothing (no commit) when no row needs it, which is every time but after a step."""
        now = self._clock()
        args = {
            "now": now,
            "ahead": now + SLACK,
            "horizon": now + horizon,
            "beyond": now + horizon + SLACK,
            "settle_beyond": now + settle_horizon + SLACK,
        }
        found = _any(_QUEUED_AHEAD, _WRITTEN_AHEAD, _BEYOND_HORIZON, _SETTLING_AHEAD)
        with self._lock:
            if not self._conn.execute(found, args).fetchone()[0]:
                return Reined()
        with self._write("rein_in") as conn:
            queued = conn.execute(_update(_QUEUED_AHEAD, "next_attempt_at = :now"), args).rowcount
            kept = conn.execute(
                _update(
                    _WRITTEN_AHEAD,
                    "next_attempt_at = :now + MAX(0, next_attempt_at - updated_at), updated_at = :now",
                ),
                args,
            ).rowcount
            capped = conn.execute(_update(_BEYOND_HORIZON, "next_attempt_at = :horizon"), args).rowcount
            settling = conn.execute(
                _update(
                    _SETTLING_AHEAD,
                    "due_at = :now, changed_at = MIN(changed_at, :now), first_seen = MIN(first_seen, :now)",
                ),
                args,
            ).rowcount
        return Reined(queued, kept + capped, settling)

    def shift_settling(self, seconds: float) -> int:
        """The wall clock was stepped by ``seconds`` (:mod:`syncd.clock_steps`): every
        settling row's last change, first sighting and next look move with it, so each
        keeps its quiet time as it was; how many rows."""
        with self._write("shift_settling") as conn:
            return conn.execute(
                "UPDATE files SET changed_at = changed_at + ?, first_seen = first_seen + ?,"
                f" due_at = due_at + ? WHERE state = '{State.SETTLING}'",
                (seconds, seconds, seconds),
            ).rowcount

    def folder_back(self, folder: str) -> int:
        """The folder ``folder`` is back (a reload, a share mounted again, a start): its
        settling rows and the uploads put off for it, looked at rarely while it was away,
        are due now; how many. No commit when there are none."""
        args = {"now": self._clock(), "folder": folder}
        settling = ("files_settle_due", f"state = '{State.SETTLING}' AND due_at > :now AND folder = :folder")
        waiting = (
            "files_state",
            f"state = '{State.RETRYING}' AND next_attempt_at > :now AND folder = :folder"
            f" AND last_error LIKE '{FOLDER_AWAY_ERROR}%'",
        )
        with self._lock:
            if not self._conn.execute(_any(settling, waiting), args).fetchone()[0]:
                return 0
        with self._write("folder_back") as conn:
            n = conn.execute(_update(settling, "due_at = :now"), args).rowcount
            return n + conn.execute(_update(waiting, "next_attempt_at = :now"), args).rowcount
