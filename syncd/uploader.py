"""The uploader pool: worker threads that take queued rows and upload them.

One row at a time per worker::

    claim_next -> open Source -> destination.upload(item, source, resume, checkpoint)
               -> sha256 + re-check size/mtime/inode -> mark_uploaded (durable)
               -> archive.finish (archive / delete / keep) -> mark_done

and on failure, by error class (see :mod:`syncd.errors`):

* ``RetryableError`` -> ``retrying`` with exponential backoff and full jitter
  (or the server's Retry-After), until ``max_attempts``; then ``failed``.
  Transport errors and 5xx are outage failures instead: they feed the
  destination's :class:`~syncd.circuit.Circuit` and give the attempt back;
  while the circuit is open the destination's files wait without spending
  attempts and one probe per backoff step finds out when it is back. A 429
  holds every worker of that destination back (the same circuit), also
  without spending attempts.
* ``PermanentError`` -> ``failed`` at once: the remote upload is aborted and
  the file moved to ``failed_dir`` with its reason.
* ``SourceChangedError`` -> the upload is discarded (aborted remotely), the
  row retired and a new version starts settling.
* ``FatalError`` -> the file goes back to the queue untouched and the whole
  destination's circuit opens ("refused") for a while (wrong credentials fail
  every file alike).
* A file that cannot be opened for reading (``PermissionError``) stays where
  it is and is tried again with a growing delay, without spending attempts.
* A missing file -> ``vanished``, unless its *folder* is unavailable
  (deleted, unmounted, marker missing): then the row waits for the folder.
  Anything unexpected is logged with its traceback and retried like a
  transient error; a worker never dies of it.

Stopping (SIGTERM) has two steps. :meth:`Uploader.stop_claiming` lets
running uploads finish; :meth:`Uploader.cancel` (the drain time is up, or a
second signal) makes them fail at their next read of the file and sends
every interrupted row back to ``queued`` without using an attempt, its
resume state (the parts already confirmed) kept for the next start.

A full disk (SQLite "database or disk is full", ENOSPC from the archive)
pauses claiming new work for every worker (:attr:`Uploader.disk_full`) until
the daemon sees a write succeed again (:meth:`Uploader.disk_ok`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from syncd import archive, failed, metadata, moves
from syncd.bandwidth import Bandwidth
from syncd.circuit import GO, UP, Circuit, CircuitState, is_outage
from syncd.destinations.base import Destination, Source, UploadItem, wire_name
from syncd.errors import (
    FatalError,
    PermanentError,
    RetryableError,
    SourceChangedError,
    SourceMovedError,
    UploadError,
    describe,
)
from syncd.ledger import Ledger, Row
from syncd.logs import qp
from syncd.progress import resumed_bytes
from syncd.retry_policy import backoff, is_disk_full, retry_class
from syncd.upload_source import (
    StoppableSource,
    UploadCancelled,
    content_type,
    find_inode,
    lexists,
    source_root,
)
from syncd.webhook import Webhook

log = logging.getLogger(__name__)

IDLE_WAIT = 0.5
FOLDER_WAIT = 10.0  # seconds before a row whose folder is unavailable is looked at again
UNCONFIGURED_WAIT = 300.0  # a row whose folder or destination left the config (reload)


def _when(at: float | None) -> str:
    """A wall-clock time for a log line: ``14:02:11``."""
    return "?" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


@dataclass
class Stats:
    """In-memory counters for status lines and metrics."""

    uploaded: int = 0
    bytes: int = 0
    failed: int = 0
    retried: int = 0
    last_upload: float | None = None
    inflight: dict[int, str] = field(default_factory=dict)  # row id -> display path
    # row id -> the file being sent and what it had confirmed before (see progress())
    sending: dict[int, _Sending] = field(default_factory=dict)


@dataclass
class _Sending:
    """An upload in flight, for :meth:`Uploader.progress`."""

    path: str
    destination: str
    total: int
    resumed: int  # bytes of parts a resumed upload had confirmed before this attempt
    started_at: float
    source: Source


class Uploader:
    def __init__(self, ledger: Ledger, destinations: Callable[[], Mapping[str, Destination]],
                 folders: Callable[[], Mapping[str, Any]], *, retry_base: float = 2.0,
                 retry_max: float = 600.0, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 folder_problem: Callable[[str], str | None] = lambda root: None,
                 metrics: Any = None) -> None:
        self.ledger = ledger
        self._destinations = destinations
        self._folders = folders
        self.folder_problem = folder_problem
        self.metrics = metrics
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = Stats()
        self.circuits: dict[str, Circuit] = {}  # destination name -> its circuit
        self._probes: dict[int, int] = {}  # row id -> probe token (the row is its circuit's probe)
        self._outage_at: dict[int, float] = {}  # row id -> time of its last outage failure
        self._unreadable: dict[int, tuple[str, int]] = {}  # row id -> (reason, tries)
        self.disk_full: dict[str, str] = {}  # where ("ledger", "archive") -> what failed
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._target = 0
        self._stopping = False
        self._cancel = threading.Event()
        self._abandoned: set[int] = set()
        self._lock = threading.Lock()
        self.on_done: Callable[[], None] = lambda: None  # told after every file a worker handled
        self._circuit_lock = threading.Lock()
        # bandwidth limits per destination (the daemon configures them) and the webhook
        # told when a file fails for good or a destination goes down or comes back
        self.bandwidth = Bandwidth()
        self.webhook: Webhook | None = None

    # pool control ---------------------------------------------------------

    def start(self, workers: int) -> None:
        self.resize(workers)

    def resize(self, workers: int) -> None:
        """Grow or shrink the pool; surplus workers exit after their current file."""
        with self._cond:
            self._target = workers
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < workers:
                t = threading.Thread(target=self._run, name=f"upload-{len(self._threads) + 1}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
            self._cond.notify_all()

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

    def stop(self, timeout: float) -> bool:
        """Stop claiming work; wait up to ``timeout`` for in-flight uploads. True if idle."""
        self.stop_claiming()
        return self.join(timeout)

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
        with self._lock:
            ids = [i for i in self.stats.inflight if i not in self._abandoned]
            self._abandoned.update(ids)
            for row_id in ids:
                try:
                    row = self.ledger.get(row_id)
                    if row is not None and row.state == "uploading":
                        self.ledger.requeue_now(row_id, reason="interrupted by shutdown")
                        requeued.append(row_id)
                except sqlite3.Error as exc:
                    log.error("could not requeue #%d at shutdown (%s); it is requeued at the "
                              "next start", row_id, exc)
        return requeued

    def progress(self) -> list[dict[str, Any]]:
        """The uploads in flight: ``id``, ``path``, ``destination``, ``total`` (bytes),
        ``sent`` (bytes read for sending, with the parts a resumed upload had confirmed;
        at most ``total``), ``resumed`` and ``started_at`` (wall clock). Cheap: no I/O."""
        with self._lock:
            sending = list(self.stats.sending.items())
        return [{"id": row_id, "path": s.path, "destination": s.destination, "total": s.total,
                 "sent": min(s.total, s.resumed + s.source.bytes_read), "resumed": s.resumed,
                 "started_at": s.started_at} for row_id, s in sorted(sending)]

    def inflight_ids(self) -> set[int]:
        with self._lock:
            return set(self.stats.inflight)

    def requeue_orphans(self) -> int:
        """Rows left ``uploading`` that no worker holds (a failed ledger write): requeue."""
        with self._lock:
            orphans = [r.id for r in self.ledger.in_state("uploading")
                       if r.id not in self.stats.inflight]
            for row_id in orphans:
                self.ledger.requeue_now(row_id, reason="interrupted")
        return len(orphans)

    # disk full ---------------------------------------------------------------

    def note_disk_full(self, where: str, exc: BaseException) -> None:
        """Pause claiming work: ``where`` ("ledger" or "archive") ran out of space."""
        first = not self.disk_full
        what = getattr(exc, "strerror", None) or str(exc)
        if where not in self.disk_full:
            log.error("disk full (%s: %s): paused taking new uploads; files stay where they "
                      "are and work resumes when space is free", where, what)
        self.disk_full[where] = what
        if first and self.metrics is not None:
            self.metrics.disk_full.set(1)

    def disk_ok(self) -> None:
        """Writes succeed again: resume claiming work."""
        if self.disk_full:
            log.warning("disk space is available again (%s); resuming uploads",
                        ", ".join(sorted(self.disk_full)))
            self.disk_full.clear()
            if self.metrics is not None:
                self.metrics.disk_full.set(0)
            self.wake()

    # circuits ----------------------------------------------------------------

    def circuit(self, name: str) -> Circuit:
        """The circuit of destination ``name`` (made, closed, on first use)."""
        with self._circuit_lock:
            circuit = self.circuits.get(name)
            if circuit is None:
                circuit = self.circuits[name] = Circuit(
                    name, base=self.retry_base, cap=self.retry_max, clock=self.clock)
            return circuit

    def set_retry(self, base: float, cap: float) -> None:
        """New ``retry_base_seconds`` / ``retry_max_seconds`` (a reload), for files and circuits."""
        self.retry_base, self.retry_max = base, cap
        with self._circuit_lock:
            for circuit in self.circuits.values():
                circuit.base, circuit.cap = base, cap

    def reset_circuits(self, names: Iterable[str]) -> None:
        """A reload changed or removed these destinations: each starts afresh, closed."""
        with self._circuit_lock:
            for name in names:
                self.circuits.pop(name, None)
        self.wake()

    def destination_states(self) -> dict[str, CircuitState]:
        """Every configured destination's circuit state (status lines, heartbeat, metrics)."""
        names = list(self._destinations())
        with self._circuit_lock:
            return {name: self.circuits[name].snapshot() if name in self.circuits
                    else CircuitState() for name in names}

    def _claim(self) -> Row | None:
        """Take the next row this worker may upload now, registered in flight; or None.

        Closed circuits let their destinations' rows through. An open one lets
        one row through per step, as its probe (:attr:`_probes`); when the
        probe is due and none of that destination's files waits, this worker,
        having nothing else to do, asks the service with ``Destination.probe()``.
        """
        if self.disk_full:
            return None
        names: list[str] = []
        probe: tuple[str, int] | None = None
        for name in self._destinations():
            ticket = self.circuit(name).admit()
            if ticket == GO:
                names.append(name)
            elif ticket is not None:
                if probe is None:
                    probe = (name, ticket)
                else:
                    self.circuit(name).release_probe(ticket)
        row = None
        try:
            # Claimed and registered as in flight in one step, so that
            # requeue_orphans never takes a row a worker has just claimed.
            with self._lock:
                if probe is not None:
                    row = self.ledger.claim_next([probe[0]])
                    if row is not None:
                        self._probes[row.id] = probe[1]
                if row is None and names:
                    row = self.ledger.claim_next(names)
                if row is not None:
                    self.stats.inflight[row.id] = row.inbox_path
                    if self.metrics is not None:
                        self.metrics.in_flight.set(len(self.stats.inflight))
        except BaseException:
            if probe is not None:
                self.circuit(probe[0]).release_probe(probe[1])
            raise
        if probe is not None and (row is None or self._probes.get(row.id) != probe[1]):
            if row is None:
                self._probe_idle(*probe)
            else:
                self.circuit(probe[0]).release_probe(probe[1])
        return row

    def _probe_idle(self, name: str, token: int) -> None:
        """The circuit of ``name`` is due for a probe and none of its files waits:
        ask the service itself (``Destination.probe()``: reachability, credentials)."""
        circuit = self.circuit(name)
        dest = self._destinations().get(name)
        try:
            if dest is None:
                return
            dest.probe()
        except FatalError as exc:
            circuit.refused(describe(exc), probe=token)
        except RetryableError as exc:
            if exc.status == 429:
                circuit.rate_limited(exc.retry_after, "rate limited (HTTP 429)", probe=token)
            elif is_outage(exc):
                verdict = circuit.failed(describe(exc), retry_after=exc.retry_after, probe=token)
                log.info("destination %r is still down (probe: %s); next probe in %.1fs", name,
                         describe(exc), max(0.0, (verdict.retry_at or 0.0) - self.clock()))
            else:
                self._service_ok(name)
        except UploadError:
            self._service_ok(name)  # an answer about the request: the service is there
        except Exception as exc:
            log.warning("destination %r: probe failed unexpectedly: %s", name, describe(exc))
            circuit.failed(describe(exc), probe=token)
        else:
            self._service_ok(name)
        finally:
            circuit.release_probe(token)  # a no-op once a verdict was recorded

    def _service_ok(self, name: str) -> None:
        """The service answered in a way that shows it works: close its circuit."""
        circuit = self.circuit(name)
        before = circuit.snapshot()
        if circuit.succeeded():
            log.warning("destination %r is back (%s since %s: %s); resuming its uploads", name,
                        before.state, _when(before.since), before.reason)
            self._circuit_moved(name, before)
            self.wake()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                if self._stopping:
                    return
                alive = [t for t in self._threads if t.is_alive()]
                if len(alive) > self._target and alive.index(me) >= self._target:
                    self._threads.remove(me)
                    return
            try:
                row = self._claim()
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    self.note_disk_full("ledger", exc)
                else:
                    log.error("ledger error while taking work: %s; pausing", exc)
                self._sleep(5.0)
                continue
            if row is None:
                self._sleep(self._idle_wait())
                continue
            state = "retrying"
            try:
                state = self.process(row)
            except sqlite3.Error as exc:
                if self.cancelled:
                    pass  # shutting down; the row is requeued by abandon_inflight or at start
                elif is_disk_full(exc):
                    self.note_disk_full("ledger", exc)
                else:
                    log.error("ledger error while recording %s: %s; it will be retried",
                              qp(row.inbox_path), exc)
                    self._sleep(5.0)
            except Exception as exc:
                if not self.cancelled:
                    log.exception("unexpected error while handling %s", qp(row.inbox_path))
                self._after_error(row, exc)
            finally:
                self._attempt_over(row, state)

    def _attempt_over(self, row: Row, state: str) -> None:
        """Bookkeeping after one claimed row was handled (the worker loop's ``finally``)."""
        token = self._probes.pop(row.id, GO)
        if token:  # a probe that ended without a verdict: the next worker may probe
            self.circuit(row.destination).release_probe(token)
        if state not in ("retrying", "queued"):
            self._outage_at.pop(row.id, None)
            self._unreadable.pop(row.id, None)
        with self._lock:
            self.stats.inflight.pop(row.id, None)
            self.stats.sending.pop(row.id, None)
            if self.metrics is not None:
                self.metrics.in_flight.set(len(self.stats.inflight))
        self.on_done()

    def _idle_wait(self) -> float:
        """Until the next row is due or a circuit may let one through, at most IDLE_WAIT.

        Rows already due that no worker took wait for their destination's
        circuit (or for disk space); they must not make the workers spin.
        """
        now = self.clock()
        due = self.ledger.next_due()
        wait = IDLE_WAIT if due is None or due <= now else min(IDLE_WAIT, due - now)
        with self._circuit_lock:
            circuits = list(self.circuits.values())
        for circuit in circuits:
            until = circuit.wait()
            if until is not None:
                wait = min(wait, until)
        return max(0.02, wait)

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)

    def _after_error(self, row: Row, error: Exception) -> None:
        """Record an unexpected error: interrupted when stopping, else retried later."""
        try:
            if self.cancelled:
                self._interrupted(row)
            else:
                self._retry(row, "internal error (see log)", None, exc=error)
        except Exception as exc:
            if is_disk_full(exc):
                self.note_disk_full("ledger", exc)
            elif not self.cancelled:
                log.exception("could not record the outcome in the ledger")

    # one file ---------------------------------------------------------------

    def process(self, row: Row) -> str:
        """Upload one claimed row and record the outcome; returns the new state."""
        folder = self._folders().get(row.folder)
        dest = self._destinations().get(row.destination)
        if folder is None or dest is None:
            # Removed by a reload: the row waits (a later reload may bring it back) without
            # using attempts or holding up the destination's other folders.
            what = "folder" if folder is None else f"destination {row.destination!r}"
            return self._defer(row, f"{what} is no longer configured", UNCONFIGURED_WAIT)
        path = row.current_path
        name = os.path.basename(row.relpath)
        assert row.size is not None and row.mtime_ns is not None and row.inode is not None
        started = time.monotonic()
        meta: metadata.Metadata | None = None
        if metadata.wanted(folder):
            resolved = self._metadata(row, folder, dest)
            if isinstance(resolved, str):
                return resolved
            meta = resolved
        try:
            source = StoppableSource(path, size=row.size, mtime_ns=row.mtime_ns,
                                      inode=row.inode, device=row.device,
                                      root=source_root(path, folder), stop=self._cancel,
                                      throttle=self.bandwidth.throttle(row.destination,
                                                                       self._cancel))
        except FileNotFoundError:
            return self._gone(row, dest, "the file disappeared before upload")
        except SourceChangedError as exc:
            return self._changed(row, dest, str(exc))
        except PermissionError as exc:
            return self._wait_readable(row, f"cannot open the file: {exc.strerror or exc}")
        except OSError as exc:
            return self._retry(row, f"cannot open the file: {exc.strerror or exc}", None, folder,
                               exc=exc)
        item = UploadItem(uuid=row.uuid, name=wire_name(name), relpath=wire_name(row.relpath),
                          size=row.size,
                          content_type=content_type(name),
                          labels=meta.labels if meta is not None else row.labels,
                          category=meta.category if meta is not None else row.category)
        with self._lock:  # progress() reads how far the destination has read it
            self.stats.sending[row.id] = _Sending(
                row.inbox_path, row.destination, row.size,
                resumed_bytes(row.resume, row.size), self.clock(), source)
        with source:
            try:
                original = self._duplicate_of(row, folder, source)
                if original is None:
                    receipt = dest.upload(item, source, row.resume,
                                          lambda state: self.ledger.checkpoint(row.id, state))
                sha = source.sha256()
                moved: SourceMovedError | None = None
                try:
                    source.check_unchanged()
                except SourceMovedError as exc:
                    moved = exc
            except sqlite3.Error:
                raise  # a checkpoint could not be written: the worker loop handles it
            except Exception as exc:
                if self.cancelled:
                    return self._interrupted(row)
                return self._attempt_failed(row, dest, folder, exc)
            if original is not None:
                return self._skip(row, folder, dest, source, original, sha, moved, meta)
            self._service_ok(row.destination)
            self.ledger.mark_uploaded(row.id, sha256=sha, receipt=receipt.to_json(),
                                      meta=meta.to_json() if meta is not None else None)
            elapsed = max(time.monotonic() - started, 1e-6)
            now = self.clock()
            with self._lock:
                self.stats.uploaded += 1
                self.stats.bytes += row.size
                self.stats.last_upload = now
            if self.metrics is not None:
                self.metrics.observe_upload(row.destination, row.size, elapsed, now)
            log.info("uploaded %s to %s (%d bytes in %.2fs, %.1f MB/s) as %s", qp(row.inbox_path),
                     row.destination, row.size, elapsed, row.size / elapsed / 1e6,
                     qp(receipt.remote_id))
            if moved is not None and not self._follow_move(row, folder, str(moved)):
                return "done"
            # the row as mark_uploaded left it (the values as JSON round-trips them), unread
            uploaded = replace(row, state="uploaded", sha256=sha, last_error=None,
                               receipt=json.loads(json.dumps(receipt.to_json())),
                               meta=json.loads(json.dumps(meta.to_json())) if meta is not None else None)
            return self.finish(uploaded, folder, source.fileno())

    def _metadata(self, row: Row, folder: Any, dest: Destination) -> metadata.Metadata | str:
        """The labels and category to send (labels_from_path, metadata_sidecar), or the
        row's new state when the sidecar stops the upload: malformed (the file fails,
        and goes to failed_dir with its sidecar), unreadable, or changed moments ago."""
        sidecar = metadata.sidecar_path(row.current_path)
        try:
            meta = metadata.resolve(folder, row.relpath, row.current_path, row.labels,
                                    row.category, [row.folder, *moves.roots_of(folder)])
        except metadata.SidecarError as exc:
            self._abort(dest, row)
            return self._fail(row, folder, (f"metadata sidecar {qp(os.path.basename(sidecar))} "
                                            f"is malformed: {exc}"))
        except PermissionError as exc:
            return self._wait_readable(row, f"cannot read its metadata sidecar: "
                                            f"{exc.strerror or exc}")
        except OSError as exc:
            return self._retry(row, f"cannot read its metadata sidecar: {exc.strerror or exc}",
                               None, folder, exc=exc)
        if meta.sidecar is not None and folder.settle_seconds > 0:
            # written after its file settled: give it the file's settle time
            age = self.clock() - meta.sidecar.mtime_ns / 1e9
            if 0 <= age < folder.settle_seconds:
                return self._defer(row, "its metadata sidecar changed moments ago; waiting for "
                                        "it to settle", folder.settle_seconds)
        return meta

    def _duplicate_of(self, row: Row, folder: Any, source: Source) -> Row | None:
        """on_duplicate = "skip": the earlier upload of the same bytes, or None.

        The SHA-256 is computed before anything is sent, from the descriptor the
        upload would read (opened through safefs); the upload, if any, reuses it.
        """
        if getattr(folder, "on_duplicate", "upload") != "skip":
            return None
        sha = source.sha256()
        if self.cancelled:
            raise UploadCancelled("syncd is stopping")
        return self.ledger.uploaded_copy(row.folder, sha, destination=row.destination,
                                         exclude=row.id)

    def _skip(self, row: Row, folder: Any, dest: Destination, source: Source, original: Row,
              sha: str, moved: SourceMovedError | None, meta: metadata.Metadata | None) -> str:
        """A duplicate: record the decision durably, then archive it like an upload.

        ``mark_duplicate`` commits before anything is moved (as ``mark_uploaded``
        does), so a crash before or during the move is finished at startup
        without uploading; :meth:`Ledger.mark_done` then makes the row ``skipped``.
        """
        self._abort(dest, row)  # a remote upload an earlier attempt had begun
        self.ledger.mark_duplicate(row.id, sha256=sha, original=original,
                                   meta=meta.to_json() if meta is not None else None)
        log.info("skipped %s: same content as #%d (%s), already uploaded to %s as %s "
                 "(on_duplicate = \"skip\")", qp(row.inbox_path), original.id,
                 qp(original.inbox_path), row.destination,
                 qp(str((original.receipt or {}).get("remote_id"))))
        if moved is not None and not self._follow_move(row, folder, str(moved)):
            return "skipped"
        current = self.ledger.get(row.id)
        assert current is not None
        return self.finish(current, folder, source.fileno())

    def _follow_move(self, row: Row, folder: Any, reason: str) -> bool:
        """The upload stands but the file left its path: find where it went.

        Renamed inside the folder: the archive takes it from its new path
        (under its original name) and the row the watcher made for the new
        path is retired, so the same bytes are not uploaded twice. Gone, or
        replaced by a new file: nothing to archive; a new file at the path is
        a new version with its own row.
        """
        found = find_inode(os.fspath(folder.path), row.inode, row.device, row.current_path) \
            if row.location is None else None
        if found is None:
            note = f"{reason.removeprefix('the file was ')}; nothing archived"
            self.ledger.mark_done(row.id, note=note)
            if row.location is None and lexists(row.folder, row.relpath):
                # a new file took the name: a new version with its own row
                self.ledger.observe(row.folder, [row.relpath], destination=row.destination,
                                    labels=row.labels, category=row.category)
            log.info("uploaded %s, which was %s", qp(row.inbox_path), note)
            return False
        self.ledger.set_location(row.id, found)
        relpath = os.path.relpath(found, os.fspath(folder.path))
        twin = self.ledger.active_for_path(os.fspath(folder.path), relpath)
        if twin is not None and twin.inode in (None, row.inode) and twin.state == "settling":
            self.ledger.forget(twin.id)
        log.info("%s was renamed to %s during upload; archiving it from there",
                 qp(row.inbox_path), qp(found))
        return True

    def finish(self, row: Row, folder: Any, fd: int | None = None) -> str:
        """Carry out after_upload for an ``uploaded`` row; "done", or "uploaded" to try later.

        ``fd`` is the descriptor the upload read, so the archive gets those bytes."""
        try:
            archive.finish(self.ledger, row, folder, fd)
        except OSError as exc:
            if is_disk_full(exc):
                self.note_disk_full("archive", exc)
            log.error("uploaded but could not %s %s: %s; will try again",
                      folder.after_upload, qp(row.current_path), exc.strerror or exc)
            return "uploaded"
        if self.metrics is not None:
            self.metrics.observe_done(row.first_seen, self.clock())
        return "done"

    def _attempt_failed(self, row: Row, dest: Destination, folder: Any, exc: Exception) -> str:
        """Record a failed upload attempt according to its error class."""
        if isinstance(exc, SourceChangedError):
            return self._changed(row, dest, str(exc))
        circuit = self.circuit(row.destination)
        probe = self._probes.get(row.id, GO)
        if isinstance(exc, FatalError):
            reason = describe(exc)
            before = circuit.snapshot()
            circuit.refused(reason, probe=probe)
            log.error("destination %r refuses uploads (%s); pausing it for %.0fs",
                      row.destination, reason, circuit.refuse_pause)
            self._circuit_moved(row.destination, before)
            self.ledger.requeue_now(row.id, reason=reason)
            return "queued"
        if isinstance(exc, RetryableError) and exc.status == 429:
            return self._rate_limited(row, exc, probe)
        if is_outage(exc):
            assert isinstance(exc, RetryableError)
            return self._outage(row, folder, exc, probe)
        if isinstance(exc, PermanentError | RetryableError) and exc.status is not None:
            self._service_ok(row.destination)  # an answer about this file: the service works
        if isinstance(exc, PermanentError):
            self._abort(dest, row)
            return self._fail(row, folder, describe(exc))
        if isinstance(exc, RetryableError):
            return self._retry(row, describe(exc), exc.retry_after, folder, exc=exc)
        if isinstance(exc, FileNotFoundError):
            return self._gone(row, dest, "the file disappeared during upload")
        if isinstance(exc, OSError):
            return self._retry(row, f"read error: {exc.strerror or exc}", None, folder, exc=exc)
        raise exc

    def _rate_limited(self, row: Row, exc: RetryableError, probe: int) -> str:
        """A 429 is about the whole account, not one file: no worker starts another
        upload to this destination until the server's wait (or a growing backoff) is
        over, and the file's attempt is given back. Uploads already in flight finish;
        they may get their own 429."""
        circuit = self.circuit(row.destination)
        before = circuit.snapshot()
        until = circuit.rate_limited(exc.retry_after, "rate limited (HTTP 429)", probe=probe)
        now = self.clock()
        if before.state != "rate_limited" or (before.next_probe_at or 0.0) < until:
            log.warning("destination %r is rate limiting; no new uploads to it for %.1fs",
                        row.destination, max(0.0, until - now))
        return self._wait_for_service(row, describe(exc), max(until, now), exc)

    def _outage(self, row: Row, folder: Any, exc: RetryableError, probe: int) -> str:
        """A transport error or a 5xx: the destination's circuit decides whether it
        belongs to the file (then it is an ordinary retry) or to the service."""
        circuit = self.circuit(row.destination)
        reason = describe(exc)
        now = self.clock()
        since = self._outage_at.get(row.id)
        self._outage_at[row.id] = now
        before = circuit.snapshot()
        verdict = circuit.failed(reason, since=since, retry_after=exc.retry_after, probe=probe)
        if verdict.open and before.state != "down":
            log.error("destination %r is down (%s); its files wait in place without using "
                      "attempts, probing it again in %.1fs", row.destination, reason,
                      max(0.0, (verdict.retry_at or now) - now))
            self._circuit_moved(row.destination, before)
        elif verdict.open and probe:
            log.info("destination %r is still down (probe: %s); next probe in %.1fs",
                        row.destination, reason, max(0.0, (verdict.retry_at or now) - now))
        if verdict.charge:
            return self._retry(row, reason, exc.retry_after, folder, exc=exc)
        if verdict.open:
            at = verdict.retry_at or now
        else:
            at = now + backoff(verdict.failures, self.retry_base, self.retry_max, self.rng,
                               exc.retry_after)
        return self._wait_for_service(row, reason, at, exc)

    def _wait_for_service(self, row: Row, reason: str, at: float, exc: BaseException) -> str:
        """Retry at ``at`` without spending an attempt: the service, not the file, failed."""
        self._unreadable.pop(row.id, None)
        self.ledger.mark_retry(row.id, error=reason, at=at, count=False)
        with self._lock:
            self.stats.retried += 1
        if self.metrics is not None:
            self.metrics.observe_retry(retry_class(exc))
        state = self.circuit(row.destination).snapshot()
        why = (f"destination {row.destination!r} is {state.state.replace('_', ' ')}"
               if state.state != UP else "a failure of the service, not of the file")
        # While it is down the destination's own lines say it; one per file is enough at INFO.
        log.log(logging.INFO if not state.up else logging.WARNING,
                "retrying %s in %.1fs (attempt not counted: %s): %s", qp(row.inbox_path),
                max(0.0, at - self.clock()), why, reason)
        return "retrying"

    def _interrupted(self, row: Row) -> str:
        """Stopping: back to queued, attempt not counted, resume state (parts sent) kept."""
        with self._lock:
            if row.id in self._abandoned:
                return "queued"
            self._abandoned.add(row.id)
            current = self.ledger.get(row.id)
            if current is None or current.state != "uploading":
                return current.state if current is not None else "queued"
            self.ledger.requeue_now(row.id, reason="interrupted by shutdown")
        parts = len((current.resume or {}).get("parts") or {})
        log.info("interrupted by shutdown: %s goes back to the queue%s", qp(row.inbox_path),
                 f" ({parts} part(s) confirmed, resumed at the next start)" if parts else "")
        return "queued"

    def _defer(self, row: Row, reason: str, delay: float) -> str:
        """Look at ``row`` again in ``delay`` seconds, without using an attempt."""
        self.ledger.requeue_now(row.id, reason=reason)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay)
        return "retrying"

    def _gone(self, row: Row, dest: Destination, reason: str) -> str:
        """The file is not there: vanished, unless its whole folder is unavailable."""
        current = self.ledger.get(row.id)
        if current is not None and current.state != "uploading":
            log.warning("%s is %s already; not marking it vanished", qp(row.inbox_path),
                        current.state)
            return current.state
        problem = None if row.location is not None else self.folder_problem(row.folder)
        if problem is not None:
            log.warning("cannot upload %s: its folder is unavailable (%s); it waits for the "
                        "folder to come back", qp(row.inbox_path), problem)
            return self._defer(row, f"folder unavailable: {problem}", FOLDER_WAIT)
        self._abort(dest, row)
        self.ledger.mark_vanished(row.id, reason=reason)
        log.info("vanished: %s (%s)", qp(row.current_path), reason)
        return "vanished"

    def _abort(self, dest: Destination, row: Row) -> None:
        current = self.ledger.get(row.id)
        resume = current.resume if current is not None else None
        if resume:
            try:
                dest.abort(resume)
            except Exception as exc:  # abort is best-effort by contract
                log.warning("could not abort the remote upload of %s: %s", qp(row.inbox_path),
                            describe(exc))

    def _changed(self, row: Row, dest: Destination, reason: str) -> str:
        if row.location is None and not lexists(row.folder, row.relpath):
            return self._gone(row, dest, reason)
        self._abort(dest, row)
        self.ledger.supersede(row, reason=f"superseded: {reason}")
        log.info("changed during upload, will upload the new version: %s (%s)",
                 qp(row.inbox_path), reason)
        return "vanished"

    def _retry(self, row: Row, reason: str, retry_after: float | None,
               folder: Any = None, *, exc: BaseException | None = None) -> str:
        self._unreadable.pop(row.id, None)
        folder = folder or self._folders().get(row.folder)
        max_attempts = folder.max_attempts if folder is not None else 8
        if row.attempts >= max_attempts and folder is not None:
            return self._fail(row, folder, f"gave up after {row.attempts} attempts: {reason}")
        delay = backoff(row.attempts, self.retry_base, self.retry_max, self.rng, retry_after)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay)
        with self._lock:
            self.stats.retried += 1
        if self.metrics is not None:
            self.metrics.observe_retry(retry_class(exc))
        log.warning("retrying %s in %.1fs (attempt %d of %d): %s", qp(row.inbox_path), delay,
                    row.attempts, max_attempts, reason)
        return "retrying"

    def _wait_readable(self, row: Row, reason: str) -> str:
        """A file we may not read stays where it is and is tried again, without
        using up attempts: its producer may still be setting permissions, and
        an operator can fix them. The delay grows like any retry's; the log says
        it once per reason (WARNING), later tries at debug level. It is shown in
        `syncd status` (recent errors) all along."""
        with self._lock:
            last, tries = self._unreadable.get(row.id, (None, 0))
            tries += 1
            self._unreadable[row.id] = (reason, tries)
        delay = backoff(tries, self.retry_base, self.retry_max, self.rng)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay, count=False)
        if reason != last:
            log.warning("cannot read %s (%s); leaving it in place and trying again with a "
                        "growing delay (next in %.1fs)", qp(row.inbox_path), reason, delay)
        else:
            log.debug("cannot read %s yet (%s, try %d); trying again in %.1fs",
                      qp(row.inbox_path), reason, tries, delay)
        return "retrying"

    def _fail(self, row: Row, folder: Any, reason: str) -> str:
        failed.to_failed(self.ledger, row, folder, reason)
        with self._lock:
            self.stats.failed += 1
        if self.metrics is not None:
            self.metrics.observe_failed()
        if self.webhook is not None:
            self.webhook.file_failed(self.ledger.get(row.id) or row, reason)
        return "failed"

    def _circuit_moved(self, name: str, before: CircuitState) -> None:
        """Tell the webhook when destination ``name`` went down (or began refusing
        uploads) or came back; ``before`` is its state before the change."""
        if self.webhook is None:
            return
        after = self.circuit(name).snapshot()
        if before.up and not after.up:
            self.webhook.destination_down(name, after)
        elif not before.up and after.up:
            self.webhook.destination_up(name, before, now=self.clock())
