"""Outcomes of an attempt that are about the file or its folder, not the service: the row
waits, using no attempt, or leaves the line.

* the file's folder or destination left the config (a reload): :meth:`FileWaits.unconfigured`;
* its folder is unavailable (another syncd's, unmounted, a symlink in its place):
  :meth:`FileWaits.wait_for_folder`, woken early when the folder is back (syncd/away.py);
* the file may not be read yet: :meth:`FileWaits.wait_readable`, with a growing delay;
* syncd itself ran out of descriptors or threads (syncd/limits.py): :meth:`FileWaits.wait_for_limit`;
* the file is gone (:meth:`FileWaits.gone`: ``vanished``) or changed during its upload
  (:meth:`FileWaits.changed`: the new version settles); either aborts the remote upload.

:class:`syncd.retry_policy.RetryPolicy` adds the failures that count against the file or
its destination.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

from syncd import failed, limits
from syncd.away import AwayFolders
from syncd.destinations.base import Destination
from syncd.errors import describe
from syncd.ledger import Ledger, Row, State
from syncd.ledger.schedule import FOLDER_AWAY_ERROR
from syncd.logs import quoted_path
from syncd.upload_source import lexists

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name

FOLDER_WAIT = 300.0  # a row whose folder is unavailable, unless the folder is back sooner (syncd/away.py)
UNCONFIGURED_WAIT = 300.0  # a row whose folder or destination left the config (reload)


def backoff(
    attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's hint, else full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return max(0.05, rng.uniform(0, ceiling))


class FileWaits:
    """The file's own outcomes; each method returns the row's new state. Its state is set
    up by :class:`~syncd.retry_policy.RetryPolicy`."""

    ledger: Ledger
    clock: Callable[[], float]
    folder_problem: Callable[[str], str | None]
    base: float
    cap: float
    rng: random.Random
    away: AwayFolders
    _folders: Callable[[], Mapping[str, Any]]
    _lock: threading.Lock
    _unreadable: dict[int, tuple[str, int]]  # row id -> (reason, tries)
    shortages: limits.Shortages

    def unconfigured(self, row: Row, folder_known: bool) -> State:
        """Removed by a reload: the row waits (a later reload may bring it back, or give it
        to a destination that `replaces` it) without using attempts or holding up the
        destination's other folders. ``folder_known``: only its destination left."""
        if folder_known:
            return self.defer(
                row, f"destination {row.destination!r} is no longer configured", UNCONFIGURED_WAIT
            )
        state = self.defer(row, f"{FOLDER_AWAY_ERROR}: it is no longer configured", UNCONFIGURED_WAIT)
        self.away.note(row.folder)  # due at once if a reload brings it back (syncd/away.py)
        return state

    def defer(self, row: Row, reason: str, delay: float) -> State:
        """Look at ``row`` again in ``delay`` seconds, without using an attempt."""
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay, count=False)
        return State.RETRYING

    def wait_for_folder(self, row: Row, problem: str) -> State:
        """The row's folder is unusable (``problem``): it waits for it, using no attempt."""
        state = self.defer(row, f"{FOLDER_AWAY_ERROR}: {problem}", FOLDER_WAIT)
        # Noted once the wait is in the ledger (the settle stage may find the folder back at
        # once, and wakes only what waits by then); said once per folder, not per file.
        first = self.away.note(row.folder)
        (log.warning if first else log.debug)(
            "cannot upload %s: its folder is unavailable (%s); its files wait for it to come back",
            quoted_path(row.inbox_path),
            problem,
        )
        return state

    def gone(self, row: Row, dest: Destination, reason: str) -> State:
        """The file is not there: vanished, unless its whole folder is unavailable."""
        current = self.ledger.get(row.id)
        if current is not None and current.state != State.UPLOADING:
            log.warning(
                "%s is %s already; not marking it vanished", quoted_path(row.inbox_path), current.state
            )
            return current.state
        problem = None if row.location is not None else self.folder_problem(row.folder)
        if problem is not None:
            return self.wait_for_folder(row, problem)
        self.abort(dest, row)
        self.ledger.mark_vanished(row.id, reason=reason)
        log.info("vanished: %s (%s)", quoted_path(row.current_path), reason)
        if row.location is not None and (folder := self._folders().get(row.folder)) is not None:
            failed.forget_reason(row, folder)  # retried, gone from failed_dir: so is why it failed
        return State.VANISHED

    def abort(self, dest: Destination, row: Row) -> None:
        """Abort the remote upload an attempt had begun (best-effort by contract)."""
        current = self.ledger.get(row.id)
        resume = current.resume if current is not None else None
        if resume:
            try:
                dest.abort(resume)
            except Exception as exc:
                log.warning(
                    "could not abort the remote upload of %s: %s", quoted_path(row.inbox_path), describe(exc)
                )

    def changed(self, row: Row, dest: Destination, reason: str) -> State:
        """Changed during upload: discard it; a new version settles."""
        if row.location is None and not lexists(row.folder, row.relpath):
            return self.gone(row, dest, reason)
        self.abort(dest, row)
        self.ledger.supersede(row, reason=f"superseded: {reason}")
        log.info(
            "changed during upload, will upload the new version: %s (%s)", quoted_path(row.inbox_path), reason
        )
        return State.VANISHED

    def wait_for_limit(self, row: Row, kind: str, exc: BaseException) -> State:
        """syncd ran out of descriptors or threads (``kind``) on this file's attempt: not the
        file's failure, nor the service's. The file waits in place, using no attempt, for a
        delay that grows like a retry's; said once for all files (syncd/limits.py)."""
        with self._lock:
            _, tries = self._unreadable.get(row.id, ("", 0))
            tries += 1
            self._unreadable[row.id] = (kind, tries)
        delay = backoff(tries, self.base, self.cap, self.rng)
        reason = f"{limits.explain(kind, exc)}: {describe(exc)}"
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay, count=False)
        self.shortages.note(kind, exc)
        log.debug("%s waits %.1fs (attempt not counted): %s", quoted_path(row.inbox_path), delay, reason)
        return State.RETRYING

    def wait_readable(self, row: Row, reason: str) -> State:
        """A file we may not read stays where it is and is tried again, without
        using up attempts: its producer may still be setting permissions, and
        an operator can fix them. The delay grows like any retry's; the log says
        it once per reason (WARNING), later tries at debug level. It is shown in
        `syncd status` (recent errors) all along."""
        with self._lock:
            last, tries = self._unreadable.get(row.id, (None, 0))
            tries += 1
            self._unreadable[row.id] = (reason, tries)
        delay = backoff(tries, self.base, self.cap, self.rng)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay, count=False)
        if reason != last:
            log.warning(
                "cannot read %s (%s); leaving it in place and trying again with a "
                "growing delay (next in %.1fs)",
                quoted_path(row.inbox_path),
                reason,
                delay,
            )
        else:
            log.debug(
                "cannot read %s yet (%s, try %d); trying again in %.1fs",
                quoted_path(row.inbox_path),
                reason,
                tries,
                delay,
            )
        return State.RETRYING
