"""The retry policy: what a failed attempt leads to, by error class, and how long a file waits.

What kind of failure an error is: syncd/failure_kinds.py (re-exported here).
:func:`backoff`: how long a file waits (full jitter, or the server's Retry-After).
The outcomes that are the file's own (the last four below) are in syncd/file_waits.py.

:class:`RetryPolicy` records the outcome of an attempt that did not succeed
(see :mod:`syncd.errors`):

* ``RetryableError`` -> ``retrying`` with backoff, until ``max_attempts``;
  then ``failed``. Transport errors, 5xx and 429s feed the destination's
  circuit instead (syncd/circuit.py, whose docstring says when the attempt
  is given back and when its files wait for a probe).
* ``PermanentError`` -> ``failed`` at once: the remote upload is aborted and
  the file moved to ``failed_dir`` with its reason.
* ``SourceChangedError`` -> the upload is discarded (aborted remotely), the
  row retired and a new version starts settling.
* ``FatalError`` -> the file is queued again untouched and the destination's circuit
  opens ("refused") for a while (wrong credentials fail every file alike); a verdict
  on settings a reload replaced (the attempt began before) only requeues the file.
* A file that cannot be opened for reading (``PermissionError``) stays where
  it is and is tried again with a growing delay, without spending attempts.
* syncd out of descriptors or threads (``EMFILE``, ``can't start new thread``,
  syncd/limits.py): the same, said once for every file; no circuit is fed.
* A missing file -> ``vanished``, unless its *folder* is unavailable
  (deleted, unmounted, marker missing): then the row waits for the folder.
* Interrupted by a stop -> back to ``queued``, no attempt spent, resume state kept.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from syncd import failed, limits
from syncd.away import AwayFolders
from syncd.circuit import THRESHOLD, UP, is_outage
from syncd.destinations.base import Destination
from syncd.errors import FatalError, PermanentError, RetryableError, SourceChangedError, describe
from syncd.failure_kinds import is_disk_full, retry_class
from syncd.file_waits import FOLDER_WAIT, FileWaits, backoff
from syncd.ledger import Ledger, Row, State
from syncd.logs import quoted_path
from syncd.progress import confirmed_more

if TYPE_CHECKING:
    from syncd.circuits import Circuits
    from syncd.config import FolderConfig
    from syncd.upload_one import Stats
    from syncd.webhook import Webhook

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name

__all__ = ["FOLDER_WAIT", "RetryPolicy", "backoff", "is_disk_full", "retry_class"]


class RetryPolicy(FileWaits):
    """What a failed attempt leads to; each method returns the row's new state (module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        circuits: Circuits,
        stats: Stats,
        folders: Callable[[], Mapping[str, Any]],
        destinations: Callable[[], Mapping[str, Destination]],
        folder_problem: Callable[[str], str | None],
        base: float,
        cap: float,
        clock: Callable[[], float],
        rng: random.Random,
        metrics: Any = None,
    ) -> None:
        self.ledger = ledger
        self.circuits = circuits
        self.stats = stats
        self._folders = folders
        self._destinations = destinations
        self.folder_problem = folder_problem
        self.base, self.cap = base, cap
        self.clock = clock
        self.rng = rng
        self.metrics = metrics
        self.webhook: Webhook | None = None  # told when a file fails for good
        self._lock = threading.Lock()
        self._outage_at: dict[int, float] = {}  # row id -> time of its last outage failure
        self._excused: dict[int, int] = {}  # row id -> its failures excused as flakiness
        self.away = AwayFolders()  # folders whose files were put off (the settle stage wakes them)
        self._unreadable: dict[int, tuple[str, int]] = {}  # row id -> (reason, tries)
        self.shortages = limits.Shortages()  # descriptors or threads syncd ran out of

    def forget(self, row_id: int) -> None:
        """The row reached a state of its own: drop what was remembered about its tries."""
        with self._lock:
            self._outage_at.pop(row_id, None)
            self._excused.pop(row_id, None)
            self._unreadable.pop(row_id, None)

    def attempt_failed(self, row: Row, dest: Destination, folder: FolderConfig, exc: Exception) -> State:
        """Record a failed upload attempt according to its error class."""
        if isinstance(exc, SourceChangedError):
            return self.changed(row, dest, str(exc))
        if (kind := limits.shortage(exc)) is not None:  # syncd's own limits: not the file's nor the service's
            return self.wait_for_limit(row, kind, exc)
        if self.circuits.stale(row, exc):
            reason = f"{describe(exc)}, on settings a reload replaced"
            log.info("%s: %s; trying the new ones", quoted_path(row.inbox_path), reason)
            self.ledger.requeue_now(row.id, reason=reason)
            return State.QUEUED
        circuit = self.circuits.get(row.destination)
        probe = self.circuits.probe_of(row.id)
        if isinstance(exc, FatalError):
            reason = describe(exc)
            before = circuit.snapshot()
            circuit.refused(reason, probe=probe)
            log.error(
                "destination %r refuses uploads (%s); pausing it for %.0fs",
                row.destination,
                reason,
                circuit.refuse_pause,
            )
            self.circuits.moved(row.destination, before)
            self.ledger.requeue_now(row.id, reason=reason)
            return State.QUEUED
        if isinstance(exc, RetryableError) and exc.status == 429:
            return self._rate_limited(row, exc, probe)
        if is_outage(exc):
            assert isinstance(exc, RetryableError)
            return self._outage(row, folder, exc, probe)
        if isinstance(exc, PermanentError | RetryableError) and exc.status is not None:
            self.circuits.service_ok(row.destination, row)  # an answer about this file: it works
        if isinstance(exc, PermanentError):
            self.abort(dest, row)
            return self.fail(row, folder, describe(exc))
        if isinstance(exc, RetryableError):
            return self.retry(row, describe(exc), exc.retry_after, folder, exc=exc)
        if isinstance(exc, FileNotFoundError):
            return self.gone(row, dest, "the file disappeared during upload")
        if isinstance(exc, OSError):
            return self.retry(row, f"read error: {exc.strerror or exc}", None, folder, exc=exc)
        raise exc

    def _rate_limited(self, row: Row, exc: RetryableError, probe: int) -> State:
        """A 429 is about the whole account, not one file: no worker starts another
        upload to this destination until the server's wait (or a growing backoff) is
        over, and the file's attempt is given back. Uploads already in flight finish;
        they may get their own 429."""
        circuit = self.circuits.get(row.destination)
        before = circuit.snapshot()
        until = circuit.rate_limited(
            exc.retry_after, "rate limited (HTTP 429)", probe=probe, min_wait=exc.min_wait
        )
        now = self.clock()
        if before.state != "rate_limited" or (before.next_probe_at or 0.0) < until:
            log.warning(
                "destination %r is rate limiting; no new uploads to it for %.1fs",
                row.destination,
                max(0.0, until - now),
            )
        return self._wait_for_service(row, describe(exc), max(until, now), exc)

    def _outage(self, row: Row, folder: FolderConfig, exc: RetryableError, probe: int) -> State:
        """A transport error or a 5xx: the destination's circuit decides whether it
        belongs to the file (then it is an ordinary retry) or to the service."""
        circuit = self.circuits.get(row.destination)
        reason = describe(exc)
        now = self.clock()
        current = self.ledger.get(row.id)  # parts confirmed before it failed: never the file's
        moved_on = current is not None and confirmed_more(row.resume, current.resume, row.size or 0)
        if moved_on and circuit.snapshot().state == UP:  # the service worked: no streak
            self.circuits.service_ok(row.destination, row)  # (an open circuit stays open)
        with self._lock:
            since = None if moved_on else self._outage_at.get(row.id)
            self._outage_at[row.id] = now
            excused = self._excused.get(row.id, 0)
        before = circuit.snapshot()
        verdict = circuit.failed(
            reason, since=since, retry_after=exc.retry_after, probe=probe, file=row.id, excused=excused
        )
        if verdict.excused:
            with self._lock:
                self._excused[row.id] = excused + 1
        if verdict.open and before.state != "down":
            log.error(
                "destination %r is down (%s); its files wait in place without using "
                "attempts, probing it again in %.1fs",
                row.destination,
                reason,
                max(0.0, (verdict.retry_at or now) - now),
            )
            self.circuits.moved(row.destination, before)
        elif verdict.open and probe:
            log.info(
                "destination %r is still down (probe: %s); next probe in %.1fs",
                row.destination,
                reason,
                max(0.0, (verdict.retry_at or now) - now),
            )
        if verdict.charge:
            return self.retry(row, reason, exc.retry_after, folder, exc=exc)
        if verdict.open:
            at = verdict.retry_at or now
        else:
            # an unopened streak (flaky service) may reach HARD_STREAK: waits stay in the first probe step
            streak = min(verdict.failures, THRESHOLD)
            at = now + backoff(streak, self.base, self.cap, self.rng, exc.retry_after)
        return self._wait_for_service(row, reason, at, exc)

    def _wait_for_service(self, row: Row, reason: str, at: float, exc: BaseException) -> State:
        """Retry at ``at`` without spending an attempt: the service, not the file, failed."""
        with self._lock:
            self._unreadable.pop(row.id, None)
        self.ledger.mark_retry(row.id, error=reason, at=at, count=False)
        self._count_retry(exc)
        state = self.circuits.get(row.destination).snapshot()
        why = (
            f"destination {row.destination!r} is {state.state.replace('_', ' ')}"
            if state.state != UP
            else "a failure of the service, not of the file"
        )
        # While it is down the destination's own lines say it; one per file is enough at INFO.
        log.log(
            logging.INFO if not state.up else logging.WARNING,
            "retrying %s in %.1fs (attempt not counted: %s): %s",
            quoted_path(row.inbox_path),
            max(0.0, at - self.clock()),
            why,
            reason,
        )
        return State.RETRYING

    def internal_error(self, row: Row, error: Exception, *, stopping: bool) -> None:
        """A bug or ledger error in an ``uploading`` row: interrupted when ``stopping``, else retried."""
        current = self.ledger.get(row.id)
        if current is None or current.state != State.UPLOADING:
            log.error(
                "#%d is %s already; the error above does not change that",
                row.id,
                "gone from the ledger" if current is None else current.state,
            )
        elif stopping:
            self.interrupted(row)
        else:
            self.retry(row, "internal error (see log)", None, exc=error)

    def interrupted(self, row: Row) -> State:
        """Stopping: back to queued, attempt not counted, resume state (parts sent) kept."""
        with self.stats.lock:
            if row.id in self.stats.abandoned:
                return State.QUEUED
            self.stats.abandoned.add(row.id)
            current = self.ledger.get(row.id)
            if current is None or current.state != State.UPLOADING:
                return current.state if current is not None else State.QUEUED
            self.ledger.requeue_now(row.id, reason="interrupted by shutdown")
        parts = len((current.resume or {}).get("parts") or {})
        log.info(
            "interrupted by shutdown: %s goes back to the queue%s",
            quoted_path(row.inbox_path),
            f" ({parts} part(s) confirmed, resumed at the next start)" if parts else "",
        )
        return State.QUEUED

    def retry(
        self,
        row: Row,
        reason: str,
        retry_after: float | None,
        folder: FolderConfig | None = None,
        *,
        exc: BaseException | None = None,
    ) -> State:
        """A failure of the file: retry after a backoff, or fail after ``max_attempts``. An
        ``exc`` that is syncd running out of descriptors or threads is no failure of the file's
        (:meth:`wait_for_limit`)."""
        if exc is not None and (kind := limits.shortage(exc)) is not None:
            return self.wait_for_limit(row, kind, exc)
        with self._lock:
            self._unreadable.pop(row.id, None)
        folder = folder or self._folders().get(row.folder)
        max_attempts = folder.max_attempts if folder is not None else 8
        if row.attempts >= max_attempts and folder is not None:
            dest = self._destinations().get(row.destination)
            if dest is not None:
                self.abort(dest, row)  # failed for good: the service may drop what it was sent
            return self.fail(row, folder, f"gave up after {row.attempts} attempts: {reason}")
        delay = backoff(row.attempts, self.base, self.cap, self.rng, retry_after)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay)
        self._count_retry(exc)
        log.warning(
            "retrying %s in %.1fs (attempt %d of %d): %s",
            quoted_path(row.inbox_path),
            delay,
            row.attempts,
            max_attempts,
            reason,
        )
        return State.RETRYING

    def fail(self, row: Row, folder: FolderConfig, reason: str) -> State:
        """For good: to failed_dir with its reason; the webhook is told."""
        failed.to_failed(self.ledger, row, folder, reason)
        with self.stats.lock:
            self.stats.failed += 1
        if self.metrics is not None:
            self.metrics.observe_failed()
        if self.webhook is not None:
            self.webhook.file_failed(self.ledger.get(row.id) or row, reason)
        return State.FAILED

    def _count_retry(self, exc: BaseException | None) -> None:
        with self.stats.lock:
            self.stats.retried += 1
        if self.metrics is not None:
            self.metrics.observe_retry(retry_class(exc))
