"""The uploader pool: worker threads that take queued rows and upload them.

One row at a time per worker::

    claim_next -> open Source -> destination.upload(item, source, resume, checkpoint)
               -> sha256 + re-check size/mtime/inode -> mark_uploaded (durable)
               -> archive.finish (archive / delete / keep) -> mark_done

and on failure, by error class (see :mod:`syncd.errors`):

* ``RetryableError`` -> ``retrying`` with exponential backoff and full jitter
  (or the server's Retry-After), until ``max_attempts``; then ``failed``.
* ``PermanentError`` -> ``failed`` at once: the remote upload is aborted and
  the file moved to ``failed_dir`` with its reason.
* ``SourceChangedError`` -> the upload is discarded (aborted remotely), the
  row retired and a new version starts settling.
* ``FatalError`` -> the file goes back to the queue untouched and the whole
  destination pauses for a while (wrong credentials fail every file alike).
* A missing file -> ``vanished``. Anything unexpected is logged with its
  traceback and retried like a transient error; a worker never dies of it.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd import archive
from syncd.destinations.base import Destination, Source, UploadItem, wire_name
from syncd.errors import (
    FatalError, PermanentError, RetryableError, SourceChangedError, describe,
)
from syncd.ledger import Ledger, Row
from syncd.logs import qp

log = logging.getLogger(__name__)

FATAL_PAUSE = 60.0  # seconds a destination rests after an authentication failure
IDLE_WAIT = 0.5


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def backoff(attempt: int, base: float, cap: float, rng: random.Random,
            retry_after: float | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's hint, else full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return max(0.05, rng.uniform(0, ceiling))


@dataclass
class Stats:
    """In-memory counters for status lines and metrics."""

    uploaded: int = 0
    bytes: int = 0
    failed: int = 0
    retried: int = 0
    last_upload: float | None = None
    inflight: dict[int, str] = field(default_factory=dict)  # row id -> display path


class Uploader:
    def __init__(self, ledger: Ledger, destinations: Callable[[], Mapping[str, Destination]],
                 folders: Callable[[], Mapping[str, Any]], *, retry_base: float = 2.0,
                 retry_max: float = 600.0, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.ledger = ledger
        self._destinations = destinations
        self._folders = folders
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = Stats()
        self.paused: dict[str, tuple[float, str]] = {}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._target = 0
        self._stopping = False
        self._lock = threading.Lock()

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

    def stop(self, timeout: float) -> bool:
        """Stop claiming work; wait up to ``timeout`` for in-flight uploads. True if idle."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def inflight_ids(self) -> set[int]:
        with self._lock:
            return set(self.stats.inflight)

    def _available(self) -> list[str]:
        now = self.clock()
        names = []
        for name in self._destinations():
            until = self.paused.get(name)
            if until is not None and until[0] > now:
                continue
            names.append(name)
        return names

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
                row = self.ledger.claim_next(self._available())
            except sqlite3.Error as exc:
                log.error("ledger error while taking work: %s; pausing", exc)
                self._sleep(5.0)
                continue
            if row is None:
                self._sleep(self._idle_wait())
                continue
            with self._lock:
                self.stats.inflight[row.id] = row.inbox_path
            try:
                self.process(row)
            except sqlite3.Error as exc:
                log.error("ledger error while recording %s: %s; it will be retried",
                          qp(row.inbox_path), exc)
                self._sleep(5.0)
            except Exception:
                log.exception("unexpected error while handling %s", qp(row.inbox_path))
                self._safe(lambda: self._retry(row, "internal error (see log)", None))
            finally:
                with self._lock:
                    self.stats.inflight.pop(row.id, None)

    def _idle_wait(self) -> float:
        due = self.ledger.next_due()
        if due is None:
            return IDLE_WAIT
        return max(0.02, min(IDLE_WAIT, due - self.clock()))

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)

    @staticmethod
    def _safe(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("could not record the outcome in the ledger")

    # one file ---------------------------------------------------------------

    def process(self, row: Row) -> str:
        """Upload one claimed row and record the outcome; returns the new state."""
        folder = self._folders().get(row.folder)
        dest = self._destinations().get(row.destination)
        if folder is None or dest is None:
            what = "folder" if folder is None else f"destination {row.destination!r}"
            self.ledger.requeue_now(row.id, reason=f"{what} is no longer configured")
            self.paused.setdefault(row.destination, (self.clock() + FATAL_PAUSE, "not configured"))
            return "queued"
        path = row.current_path
        name = os.path.basename(row.relpath)
        assert row.size is not None and row.mtime_ns is not None and row.inode is not None
        started = time.monotonic()
        try:
            source = Source(path, size=row.size, mtime_ns=row.mtime_ns, inode=row.inode)
        except FileNotFoundError:
            self.ledger.mark_vanished(row.id, reason="the file disappeared before upload")
            log.info("vanished before upload: %s", qp(path))
            return "vanished"
        except SourceChangedError as exc:
            return self._changed(row, dest, str(exc))
        except OSError as exc:
            return self._retry(row, f"cannot open the file: {exc.strerror or exc}", None, folder)
        item = UploadItem(uuid=row.uuid, name=wire_name(name), relpath=wire_name(row.relpath),
                          size=row.size,
                          content_type=content_type(name), labels=row.labels,
                          category=row.category)
        with source:
            try:
                receipt = dest.upload(item, source, row.resume,
                                      lambda state: self.ledger.checkpoint(row.id, state))
                sha = source.sha256()
                source.check_unchanged()
            except SourceChangedError as exc:
                return self._changed(row, dest, str(exc))
            except FatalError as exc:
                reason = describe(exc)
                self.paused[row.destination] = (self.clock() + FATAL_PAUSE, reason)
                log.error("destination %r refuses uploads (%s); pausing it for %.0fs",
                          row.destination, reason, FATAL_PAUSE)
                self.ledger.requeue_now(row.id, reason=reason)
                return "queued"
            except PermanentError as exc:
                self._abort(dest, row)
                return self._fail(row, folder, describe(exc))
            except RetryableError as exc:
                return self._retry(row, describe(exc), exc.retry_after, folder)
            except FileNotFoundError:
                self.ledger.mark_vanished(row.id, reason="the file disappeared during upload")
                return "vanished"
            except OSError as exc:
                return self._retry(row, f"read error: {exc.strerror or exc}", None, folder)
        self.ledger.mark_uploaded(row.id, sha256=sha, receipt=receipt.to_json())
        elapsed = max(time.monotonic() - started, 1e-6)
        with self._lock:
            self.stats.uploaded += 1
            self.stats.bytes += row.size
            self.stats.last_upload = self.clock()
        log.info("uploaded %s to %s (%d bytes in %.2fs, %.1f MB/s) as %s", qp(row.inbox_path),
                 row.destination, row.size, elapsed, row.size / elapsed / 1e6, qp(receipt.remote_id))
        uploaded = self.ledger.get(row.id)
        assert uploaded is not None
        try:
            archive.finish(self.ledger, uploaded, folder)
        except OSError as exc:
            log.error("uploaded but could not %s %s: %s; will try again",
                      folder.after_upload, qp(path), exc.strerror or exc)
            return "uploaded"
        return "done"

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
        self._abort(dest, row)
        if not os.path.lexists(row.current_path):
            self.ledger.mark_vanished(row.id, reason=reason)
            log.info("vanished during upload: %s", qp(row.inbox_path))
            return "vanished"
        self.ledger.supersede(row, reason=f"superseded: {reason}")
        log.info("changed during upload, will upload the new version: %s (%s)",
                 qp(row.inbox_path), reason)
        return "vanished"

    def _retry(self, row: Row, reason: str, retry_after: float | None,
               folder: Any = None) -> str:
        folder = folder or self._folders().get(row.folder)
        max_attempts = folder.max_attempts if folder is not None else 8
        if row.attempts >= max_attempts and folder is not None:
            return self._fail(row, folder, f"gave up after {row.attempts} attempts: {reason}")
        delay = backoff(row.attempts, self.retry_base, self.retry_max, self.rng, retry_after)
        self.ledger.mark_retry(row.id, error=reason, at=self.clock() + delay)
        with self._lock:
            self.stats.retried += 1
        log.warning("retrying %s in %.1fs (attempt %d of %d): %s", qp(row.inbox_path), delay,
                    row.attempts, max_attempts, reason)
        return "retrying"

    def _fail(self, row: Row, folder: Any, reason: str) -> str:
        archive.to_failed(self.ledger, row, folder, reason)
        with self._lock:
            self.stats.failed += 1
        return "failed"
