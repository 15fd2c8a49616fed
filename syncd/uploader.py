"""The worker pool: ``workers`` threads that take queued rows and upload them.

Each worker loops: claim a row (:meth:`Uploader._claim`), upload it
(:class:`syncd.upload_one.Procedure`; an attempt that fails is recorded by
:class:`syncd.retry_policy.RetryPolicy`), then its bookkeeping, or wait
until something is due. Before claiming, a worker asks each destination's
circuit (syncd/circuits.py) whether it may; an idle worker makes a due probe
of a destination with no file waiting. Nothing is claimed while the disk is
full (syncd/backpressure.py). A row is claimed and registered as in flight in
one step, under the same lock :meth:`syncd.recovery.Recovery.requeue_orphans` takes, so the
sweep never requeues a row a worker has just claimed. Anything unexpected is
logged with its traceback and retried like a transient error; a worker never
dies of it.

Every worker keeps a heartbeat (:mod:`syncd.liveness`): a step begins at
each claim, each phase of the upload and every block read from the file is
progress, and waiting for work is idle.

Stopping (SIGTERM) has two steps. :meth:`Uploader.stop_claiming` lets
running uploads finish; :meth:`Uploader.cancel` (the drain time is up, or a
second signal) makes them fail at their next read of the file and sends
every interrupted row back to ``queued`` without using an attempt, its
resume state (the parts already confirmed) kept for the next start.
:meth:`Uploader.abandon_inflight` requeues what did not stop in time.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from syncd import limits
from syncd.backpressure import DiskFull
from syncd.bandwidth import Bandwidth
from syncd.circuit import Circuit, CircuitState
from syncd.circuits import Circuits
from syncd.destinations.base import Destination
from syncd.ledger import Ledger, Row, State
from syncd.liveness import Liveness, Pulse
from syncd.logs import quoted_path
from syncd.retry_policy import RetryPolicy, is_disk_full
from syncd.upload_one import Procedure, Stats

if TYPE_CHECKING:
    from syncd.webhook import Webhook

log = logging.getLogger(__name__)

IDLE_WAIT = 2.0  # an idle worker looks for work at least this often (`syncd retry` says nothing)
PAUSE = 5.0  # after a ledger error while taking work


class Uploader:
    def __init__(
        self,
        ledger: Ledger,
        destinations: Callable[[], Mapping[str, Destination]],
        folders: Callable[[], Mapping[str, Any]],
        *,
        retry_base: float = 2.0,
        retry_max: float = 600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        folder_problem: Callable[[str], str | None] = lambda root: None,
        metrics: Any = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.ledger = ledger
        self._destinations = destinations
        self.metrics = metrics
        self.clock = clock
        self.stats = Stats()
        self.liveness = liveness or Liveness()
        self.disk_full = DiskFull(metrics, on_ok=self.wake)
        self.circuits = Circuits(destinations, base=retry_base, cap=retry_max, clock=clock, on_back=self.wake)
        # bandwidth limits per destination (the daemon configures them)
        self.bandwidth = Bandwidth()
        self._cancel = threading.Event()
        self.policy = RetryPolicy(
            ledger,
            circuits=self.circuits,
            stats=self.stats,
            folders=folders,
            destinations=destinations,
            folder_problem=folder_problem,
            base=retry_base,
            cap=retry_max,
            clock=clock,
            rng=rng or random.Random(),
            metrics=metrics,
        )
        self.procedure = Procedure(
            ledger,
            destinations=destinations,
            folders=folders,
            policy=self.policy,
            circuits=self.circuits,
            stats=self.stats,
            disk_full=self.disk_full,
            bandwidth=self.bandwidth,
            cancel=self._cancel,
            clock=clock,
            metrics=metrics,
        )
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._started = 0  # workers started so far
        self._target = 0
        self._stopping = False
        self.on_done: Callable[[Row], None] = lambda row: None  # told after every file a worker handled

    def set_webhook(self, hook: Webhook | None) -> None:
        """Told when a file fails for good or a destination goes down or comes back."""
        self.policy.webhook = self.circuits.webhook = hook

    # pool control ---------------------------------------------------------

    def resize(self, workers: int) -> None:
        """Grow or shrink the pool; surplus workers exit after their current file. At the
        thread limit (``TasksMax=``) the pool has what it could start, said once (limits.py)."""
        with self._cond:
            self._target = workers
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < workers:
                # never a name in use: each worker's heartbeat goes by its name (syncd/liveness.py)
                self._started += 1
                t = threading.Thread(target=self._run, name=f"upload-{self._started}", daemon=True)
                if (short := limits.start(t)) is not None:
                    if self.policy.shortages.note(limits.THREADS, short):
                        log.error("only %d of %d upload workers started", len(self._threads), workers)
                    break
                self._threads.append(t)
            self._cond.notify_all()

    def top_up(self) -> None:
        """The workers a thread limit kept from starting, started now if it allows (the sweep)."""
        if not self._stopping and self.busy() < self._target:
            self.resize(self._target)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop_claiming(self) -> None:
        """Take no new work; uploads in flight go on. Idle workers exit."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def busy(self) -> int:
        """How many workers are still running (after stop_claiming: still uploading)."""
        return sum(1 for t in self._threads if t.is_alive())

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every worker to exit; True if none is left."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return self.busy() == 0

    def cancel(self) -> None:
        """Interrupt the uploads in flight: they are requeued with their resume state."""
        self.stop_claiming()
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def abandon_inflight(self) -> list[int]:
        """After cancel(): requeue the rows of workers that did not finish in time.

        Their threads may still be blocked in the network; whatever they
        record later is ignored. Returns the row ids requeued.
        """
        requeued = []
        with self.stats.lock:
            ids = [i for i in self.stats.inflight if i not in self.stats.abandoned]
            self.stats.abandoned.update(ids)
            for row_id in ids:
                try:
                    row = self.ledger.get(row_id)
                    if row is not None and row.state == State.UPLOADING:
                        self.ledger.requeue_now(row_id, reason="interrupted by shutdown")
                        requeued.append(row_id)
                except sqlite3.Error as exc:
                    log.error(
                        "could not requeue #%d at shutdown (%s); it is requeued at the next start",
                        row_id,
                        exc,
                    )
        return requeued

    # what is in flight ------------------------------------------------------

    def progress(self) -> list[dict[str, Any]]:
        """The uploads in flight: ``id``, ``path``, ``destination``, ``total`` (bytes),
        ``sent`` (bytes read for sending, with the parts a resumed upload had confirmed;
        at most ``total``), ``resumed`` and ``started_at`` (wall clock). Cheap: no I/O."""
        with self.stats.lock:
            sending = list(self.stats.sending.items())
        return [
            {
                "id": row_id,
                "path": s.path,
                "destination": s.destination,
                "total": s.total,
                "sent": min(s.total, s.resumed + s.source.bytes_read),
                "resumed": s.resumed,
                "started_at": s.started_at,
            }
            for row_id, s in sorted(sending)
        ]

    def inflight_ids(self) -> set[int]:
        with self.stats.lock:
            return set(self.stats.inflight)

    # circuits (syncd/circuits.py) ---------------------------------------------

    def circuit(self, name: str) -> Circuit:
        """The circuit of destination ``name``."""
        return self.circuits.get(name)

    def set_retry(self, base: float, cap: float) -> None:
        """New ``retry_base_seconds`` / ``retry_max_seconds`` (a reload), for files and circuits."""
        self.policy.base, self.policy.cap = base, cap
        self.circuits.set_retry(base, cap)

    def reset_circuits(self, names: Iterable[str]) -> list[str]:
        """A reload changed or removed these destinations: each starts afresh, closed, but
        a rate limit's wait stands (:meth:`Circuits.reset`); the names that started afresh."""
        afresh = self.circuits.reset(names)
        self.wake()
        return afresh

    def destination_states(self) -> dict[str, CircuitState]:
        """Every configured destination's circuit state (status lines, heartbeat, metrics)."""
        return self.circuits.states()

    # one file (syncd/upload_one.py) -------------------------------------------

    def process(self, row: Row) -> State:
        """Upload one claimed row and record the outcome; returns the new state."""
        return self.procedure.run(row)

    # the workers --------------------------------------------------------------

    def _claim(self) -> Row | None:
        """Take the next row this worker may upload now, registered in flight; or None.

        Closed circuits let their destinations' rows through. An open one lets
        one row through per step, as its probe; when the probe is due and none
        of that destination's files waits (or the next one is large), this
        worker asks the service with ``Destination.probe()``.
        """
        if self.disk_full.paused:
            return None
        names, probe = self.circuits.admit()
        row = None
        try:
            with self.stats.lock:
                if probe is not None:
                    row = self.ledger.claim_next([probe[0]])
                    if row is not None:
                        self.circuits.probe_with(row.id, probe[1])
                if row is None and names:
                    row = self.ledger.claim_next(names)
                if row is not None:
                    self.circuits.claimed(row)
                    self.stats.inflight[row.id] = row.inbox_path
                    if self.metrics is not None:
                        self.metrics.set_in_flight(len(self.stats.inflight))
        except BaseException:
            if probe is not None:
                self.circuits.get(probe[0]).release_probe(probe[1])
            raise
        if probe is not None and (row is None or self.circuits.probe_of(row.id) != probe[1]):
            if row is None:
                self.circuits.probe_idle(*probe)
            else:
                self.circuits.get(probe[0]).release_probe(probe[1])
        elif probe is not None and row is not None and not self.circuits.probe_with_file(row):
            try:
                self.ledger.requeue_now(row.id, reason=row.last_error)  # no attempt spent
            finally:  # not in flight even when the ledger failed: the sweep requeues it
                self._attempt_over(row, State.QUEUED)
            return None
        return row

    def _run(self) -> None:
        me = threading.current_thread()
        pulse = self.liveness.pulse(me.name, "worker")
        try:
            while self._turn(me, pulse):
                pass
        finally:
            self.liveness.release(pulse)

    def _turn(self, me: threading.Thread, pulse: Pulse) -> bool:
        """One turn of a worker: claim, upload, record; or wait. False when it should exit."""
        with self._cond:
            if self._stopping:
                return False
            alive = [t for t in self._threads if t.is_alive()]
            if len(alive) > self._target and alive.index(me) >= self._target:
                self._threads.remove(me)
                return False
        pulse.step("taking work")
        try:
            row = self._claim()
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.disk_full.note("ledger", exc)
            else:
                log.error("ledger error while taking work: %s; pausing", exc)
            self._sleep(PAUSE, pulse)
            return True
        except Exception:
            log.exception("unexpected error while taking work; pausing")
            self._sleep(PAUSE, pulse)
            return True
        if row is None:
            self._sleep(self._idle_wait(), pulse)
            return True
        state = State.RETRYING
        try:
            state = self.procedure.run(row, pulse)
        except sqlite3.Error as exc:
            if self.cancelled:
                pass  # shutting down; the row is requeued by abandon_inflight or at start
            elif is_disk_full(exc):
                self.disk_full.note("ledger", exc)
            else:
                log.error(
                    "ledger error while recording %s: %s; it will be retried",
                    quoted_path(row.inbox_path),
                    exc,
                )
                self._sleep(PAUSE, pulse)
        except Exception as exc:
            if not self.cancelled:
                log.exception("unexpected error while handling %s", quoted_path(row.inbox_path))
            self._after_error(row, exc)
        finally:
            self._attempt_over(row, state)
        return True

    def _attempt_over(self, row: Row, state: State) -> None:
        """Bookkeeping after one claimed row was handled (the worker loop's ``finally``)."""
        self.circuits.attempt_over(row.id, row.destination)
        if state not in (State.RETRYING, State.QUEUED):
            self.policy.forget(row.id)
        with self.stats.lock:
            self.stats.inflight.pop(row.id, None)
            self.stats.sending.pop(row.id, None)
            if self.metrics is not None:
                self.metrics.set_in_flight(len(self.stats.inflight))
        self.on_done(row)

    def _idle_wait(self) -> float:
        """Until the next row is due or a circuit may let one through, at most IDLE_WAIT.

        Rows already due that no worker took wait for their destination's
        circuit (or for disk space); they must not make the workers spin.
        """
        now = self.clock()
        due = self.ledger.next_due()
        wait = IDLE_WAIT if due is None or due <= now else min(IDLE_WAIT, due - now)
        for until in self.circuits.waits():
            wait = min(wait, until)
        return max(0.02, wait)

    def _sleep(self, seconds: float, pulse: Pulse) -> None:
        pulse.idle()
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)

    def _after_error(self, row: Row, error: Exception) -> None:
        """Record an unexpected error: interrupted when stopping, else retried later.

        Only while the row is still ``uploading``: an error after the upload was
        recorded (``uploaded``, or further) leaves the row to the sweep, which
        finishes its archive move; a retry would send it again, or abort it."""
        try:
            self.policy.internal_error(row, error, stopping=self.cancelled)
        except Exception as exc:
            if is_disk_full(exc):
                self.disk_full.note("ledger", exc)
            elif not self.cancelled:
                log.exception("could not record the outcome in the ledger")
