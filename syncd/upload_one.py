"""The upload of one claimed row, from opening the file to handing it to the archive.

::

    metadata (labels_from_path, sidecar) -> open the Source (safefs, same inode)
      -> [on_duplicate = "skip": SHA-256 first; an earlier upload of it -> skipped]
      -> destination.upload(item, source, resume, checkpoint)
      -> SHA-256 + re-check size/mtime/inode (moved during upload: follow it)
      -> mark_uploaded (durable) -> archive.finish (archive / delete / keep) -> mark_done

An attempt that does not succeed is recorded by the retry policy
(:class:`syncd.retry_policy.RetryPolicy`: retry, wait for the service, defer,
fail, vanish). Each phase is reported to the worker's heartbeat
(:mod:`syncd.liveness`), and so is every block of the file read for sending.
The archive step is :mod:`syncd.hand_over`, which the sweep uses too.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from syncd import archive, left_sidecars, limits, metadata, moves
from syncd.backpressure import DiskFull
from syncd.bandwidth import Bandwidth
from syncd.circuits import Circuits
from syncd.destinations.base import Destination, Receipt, Source, UploadItem, wire_name
from syncd.errors import SourceChangedError, SourceMovedError
from syncd.hand_over import HandOver
from syncd.ledger import Ledger, Row, State
from syncd.liveness import NO_PULSE, Pulse, local_allowance
from syncd.logs import quoted_path
from syncd.offload import Handover, Offload
from syncd.progress import resumed_bytes
from syncd.retry_policy import RetryPolicy
from syncd.upload_source import (
    StoppableSource,
    UploadCancelled,
    adopt_failed,
    content_type,
    follow_move,
    source_root,
)

if TYPE_CHECKING:
    from syncd.config import FolderConfig

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name


@dataclass
class Sending:
    """An upload in flight, for :meth:`syncd.uploader.Uploader.progress`."""

    path: str
    destination: str
    total: int
    resumed: int  # bytes of parts a resumed upload had confirmed before this attempt
    started_at: float
    source: Source


@dataclass
class Stats:
    """In-memory counters for status lines and metrics, and the rows in flight."""

    uploaded: int = 0
    bytes: int = 0
    failed: int = 0
    retried: int = 0
    last_upload: float | None = None
    inflight: dict[int, str] = field(default_factory=dict)  # row id -> display path
    sending: dict[int, Sending] = field(default_factory=dict)  # row id -> the file being sent
    abandoned: set[int] = field(default_factory=set)  # requeued at shutdown: outcomes ignored
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class Procedure:
    """Uploads one claimed row and records the outcome (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        destinations: Callable[[], Mapping[str, Destination]],
        folders: Callable[[], Mapping[str, Any]],
        policy: RetryPolicy,
        circuits: Circuits,
        stats: Stats,
        disk_full: DiskFull,
        bandwidth: Bandwidth,
        cancel: threading.Event,
        clock: Callable[[], float],
        metrics: Any = None,
    ) -> None:
        self.ledger = ledger
        self._destinations = destinations
        self._folders = folders
        self.policy = policy
        self.circuits = circuits
        self.stats = stats
        self.bandwidth = bandwidth
        self.cancel = cancel
        self.clock = clock
        self.metrics = metrics
        self.offload: Offload | None = None  # upload helpers, when configured (the runtime sets it)
        self.after = HandOver(
            ledger, policy=policy, disk_full=disk_full, cancel=cancel, clock=clock, metrics=metrics
        )

    def run(self, row: Row, pulse: Pulse = NO_PULSE) -> State:
        """Upload one claimed row and record the outcome; returns the new state."""
        folder = self._folders().get(row.folder)
        dest = self._destinations().get(row.destination)
        policy = self.policy
        if folder is None or dest is None:  # removed by a reload
            return policy.unconfigured(row, folder_known=folder is not None)
        if row.location is None and (problem := policy.folder_problem(row.folder)) is not None:
            return policy.wait_for_folder(row, problem)  # another syncd's now, unmounted, ...
        row = adopt_failed(self.ledger, row, folder, lambda old: policy.abort(dest, old))
        path = row.current_path
        name = os.path.basename(row.relpath)
        assert row.size is not None and row.mtime_ns is not None and row.inode is not None
        started = time.monotonic()
        meta: metadata.Metadata | None = None
        if metadata.wanted(folder):
            pulse.phase("reading metadata")
            resolved = self._metadata(row, folder, dest)
            if isinstance(resolved, State):
                return resolved
            meta = resolved
        pulse.phase("opening the file")
        try:
            source = StoppableSource(
                path,
                size=row.size,
                mtime_ns=row.mtime_ns,
                inode=row.inode,
                device=row.device,
                root=source_root(path, folder),
                stop=self.cancel,
                throttle=self.bandwidth.throttle(row.destination, self.cancel),
                on_read=pulse.beat,
            )
        except FileNotFoundError:
            return policy.gone(row, dest, "the file disappeared before upload")
        except SourceChangedError as exc:
            return policy.changed(row, dest, str(exc))
        except PermissionError as exc:
            return policy.wait_readable(row, f"cannot open the file: {exc.strerror or exc}")
        except OSError as exc:
            return policy.retry(row, f"cannot open the file: {exc.strerror or exc}", None, folder, exc=exc)
        item = UploadItem(
            uuid=row.uuid,
            name=wire_name(name),
            relpath=wire_name(row.relpath),
            size=row.size,
            content_type=content_type(name),
            labels=meta.labels if meta is not None else row.labels,
            category=meta.category if meta is not None else row.category,
        )
        with self.stats.lock:  # progress() reads how far the destination has read it
            self.stats.sending[row.id] = Sending(
                row.inbox_path,
                row.destination,
                row.size,
                resumed_bytes(row.resume, row.size),
                self.clock(),
                source,
            )
        whole_file = local_allowance(row.size)  # a local read of all of it, unreported
        with source:
            try:
                original = self._duplicate_of(row, folder, source, pulse)
                if original is None:
                    pulse.phase(f"sending to {row.destination}")
                    receipt = self._send(row, dest, item, source, pulse)
                pulse.phase("verifying", whole_file)
                sha = source.sha256()
                moved: SourceMovedError | None = None
                unchecked = False  # where the file is now: out of descriptors to look
                try:
                    source.check_unchanged()
                except SourceMovedError as exc:
                    moved = exc
                except OSError as exc:
                    if (kind := limits.shortage(exc)) is None:
                        raise
                    policy.shortages.note(kind, exc)
                    unchecked = True
            except sqlite3.Error:
                raise  # a checkpoint could not be written: the worker loop handles it
            except Exception as exc:
                pulse.phase("recording the outcome", whole_file)
                if self.cancel.is_set():
                    return policy.interrupted(row)
                return policy.attempt_failed(row, dest, folder, exc)
            pulse.phase("recording the upload", whole_file)
            if original is not None:
                return self._skip(row, folder, dest, source, original, sha, moved, meta)
            self.circuits.service_ok(row.destination, row)
            target = archive.natural_target(row, folder) if moved is None else None
            self.after.record(
                row,
                pulse,
                sha256=sha,
                receipt=receipt.to_json(),
                meta=meta.to_json() if meta is not None else None,
                archive_target=target,
                ctime_ns=source.checked_ctime_ns,  # a kept file is known by it (syncd/kept.py)
            )
            elapsed = max(time.monotonic() - started, 1e-6)
            now = self.clock()
            with self.stats.lock:
                self.stats.uploaded += 1
                self.stats.bytes += row.size
                self.stats.last_upload = now
            if self.metrics is not None:
                self.metrics.observe_upload(row.destination, row.size, elapsed, now)
            log.info(
                "uploaded %s to %s (%d bytes in %.2fs, %.1f MB/s) as %s",
                quoted_path(row.inbox_path),
                row.destination,
                row.size,
                elapsed,
                row.size / elapsed / 1e6,
                quoted_path(receipt.remote_id),
            )
            if unchecked:  # not sent again: the sweep archives it, as after a crash (recovery.py)
                return State.UPLOADED
            if moved is not None:
                if not (followed := follow_move(self.ledger, row, folder, str(moved), policy.shortages)):
                    return State.DONE if followed is False else State.UPLOADED  # None: the sweep's
                uploaded = self.ledger.get(row.id)  # with the location it was found at
                assert uploaded is not None
            else:
                # the row as mark_uploaded left it (values as JSON round-trips them), not read again
                uploaded = replace(
                    row,
                    state=State.UPLOADED,
                    sha256=sha,
                    last_error=None,
                    receipt=json.loads(json.dumps(receipt.to_json())),
                    meta=json.loads(json.dumps(meta.to_json())) if meta is not None else None,
                    archive_path=target if target is not None else row.archive_path,
                )
            return self.finish(uploaded, folder, source.fileno(), fresh=True)

    def _send(self, row: Row, dest: Destination, item: UploadItem, source: Source, pulse: Pulse) -> Receipt:
        """``dest.upload``, here or by an idle upload helper (syncd/offload.py)."""

        def checkpoint(state: Any) -> None:
            self.ledger.checkpoint(row.id, state)

        offload = self.offload
        helper = None if offload is None else offload.take(row, self.bandwidth, self.cancel)
        if offload is None or helper is None:
            return dest.upload(item, source, row.resume, checkpoint)
        return offload.upload(helper, Handover(row, item, source, checkpoint, pulse.beat, self.cancel))

    def _metadata(self, row: Row, folder: FolderConfig, dest: Destination) -> metadata.Metadata | State:
        """The labels and category to send (labels_from_path, metadata_sidecar), or the
        row's new state when the sidecar stops the upload: malformed (the file fails,
        and goes to failed_dir with its sidecar), unreadable, or changed moments ago."""
        policy, sidecar = self.policy, metadata.sidecar_path(row.current_path)
        roots = [row.folder, *moves.roots_of(folder)]
        try:
            meta = metadata.resolve(folder, row.relpath, row.current_path, row.labels, row.category, roots)
        except metadata.SidecarError as exc:
            try:
                mtime_ns = metadata.sidecar_mtime(sidecar, roots)
            except OSError as short:  # syncd out of descriptors to look: the file waits (retry)
                return policy.retry(row, f"cannot look at its sidecar: {short}", None, exc=short)
            if metadata.waited_for(mtime_ns, folder, row.first_seen, self.clock()):  # half-written, perhaps
                return policy.defer(row, "its metadata sidecar changed moments ago", folder.settle_seconds)
            policy.abort(dest, row)
            return policy.fail(
                row,
                folder,
                (f"metadata sidecar {quoted_path(os.path.basename(sidecar))} is malformed: {exc}"),
            )
        except PermissionError as exc:
            return policy.wait_readable(row, f"cannot read its metadata sidecar: {exc.strerror or exc}")
        except OSError as exc:
            return policy.retry(
                row, f"cannot read its metadata sidecar: {exc.strerror or exc}", None, folder, exc=exc
            )
        earlier = None if meta.sidecar is None else left_sidecars.left_by(self.ledger, row, meta.sidecar)
        if earlier is not None:  # an earlier file's, left in the inbox when that file left
            policy.abort(dest, row)
            return policy.fail(row, folder, left_sidecars.reason(row, earlier))
        if meta.sidecar is not None and metadata.waited_for(
            meta.sidecar.mtime_ns, folder, row.first_seen, self.clock()
        ):
            # written after its file settled: give it the file's settle time
            return policy.defer(
                row,
                "its metadata sidecar changed moments ago; waiting for it to settle",
                folder.settle_seconds,
            )
        return meta

    def _duplicate_of(self, row: Row, folder: FolderConfig, source: Source, pulse: Pulse) -> Row | None:
        """on_duplicate = "skip": the earlier upload of the same bytes, or None.

        The SHA-256 is computed before anything is sent, from the descriptor the
        upload would read (opened through safefs); the upload, if any, reuses it.
        """
        if getattr(folder, "on_duplicate", "upload") != "skip":
            return None
        pulse.phase("hashing (on_duplicate)", local_allowance(row.size))
        sha = source.sha256()
        if self.cancel.is_set():
            raise UploadCancelled("syncd is stopping")
        return self.ledger.uploaded_copy(row.folder, sha, destination=row.destination, exclude=row.id)

    def _skip(
        self,
        row: Row,
        folder: FolderConfig,
        dest: Destination,
        source: Source,
        original: Row,
        sha: str,
        moved: SourceMovedError | None,
        meta: metadata.Metadata | None,
    ) -> State:
        """A duplicate: record the decision durably, then archive it like an upload.

        ``mark_duplicate`` commits before anything is moved (as ``mark_uploaded``
        does), so a crash before or during the move is finished at startup
        without uploading; :meth:`Ledger.mark_done` then makes the row ``skipped``.
        """
        self.policy.abort(dest, row)  # a remote upload an earlier attempt had begun
        self.ledger.mark_duplicate(
            row.id,
            sha256=sha,
            original=original,
            meta=meta.to_json() if meta is not None else None,
            ctime_ns=source.checked_ctime_ns,
        )
        log.info(
            'skipped %s: same content as #%d (%s), already uploaded to %s as %s (on_duplicate = "skip")',
            quoted_path(row.inbox_path),
            original.id,
            quoted_path(original.inbox_path),
            row.destination,
            quoted_path(str((original.receipt or {}).get("remote_id"))),
        )
        if moved is not None and not follow_move(self.ledger, row, folder, str(moved)):
            return State.SKIPPED
        current = self.ledger.get(row.id)
        assert current is not None
        return self.finish(current, folder, source.fileno())

    def finish(self, row: Row, folder: FolderConfig, fd: int | None = None, *, fresh: bool = False) -> State:
        """Carry out after_upload for an ``uploaded`` row; "done", or "uploaded" to try later.

        ``fd`` is the descriptor the upload read, so the archive gets those bytes;
        ``fresh``: marked uploaded just now (:func:`syncd.archive.finish`)."""
        return State.DONE if self.after.hand_over(row, folder, fd, fresh=fresh) is None else State.UPLOADED
