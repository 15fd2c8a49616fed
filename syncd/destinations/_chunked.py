"""The multi-part upload loop, written once for every service (style.md §3).

S3-style parts (Lilt multipart, WriftAI uploads), chunked form posts (Xvid)
and Content-Range chunks (api.video) are all the same loop: *open a session,
send part n, checkpoint the confirmed parts, finish, or abort*. This
module owns that loop; a service plugs in the way a backend plugs into
rclone's chunk writer: it implements :class:`ChunkedService`, four methods
(``open``, ``send_part``, ``finish``, ``abort``), and describes its parts and
its session as data (:class:`PartRules`, ``session_fields``).

What the driver owns
--------------------
* **Planning.** The part size is ``rules.part_size`` (the whole file when
  None) adjusted to the service's :class:`PartRules`: at least ``min_size``,
  a multiple of ``multiple``, at most ``max_size``, and large enough that the
  file needs at most ``max_parts`` parts (S3: 10,000). A file that cannot fit
  raises :class:`~syncd.errors.PermanentError` before anything is opened.
  A server that dictates the part size returns it from ``open``.
* **Reading.** Part *n* is read through the :class:`~syncd.destinations.base.Source`
  (``Part.stream()``, ``Part.file()`` or ``Part.read()``), so the bytes are
  hashed and change detection applies. Parts go out in order by default, so
  the hash is computed on the way; with ``Parallel(per_file > 1)`` they may
  not, and ``Source.sha256()`` reads what was not hashed at the end.
* **Checkpointing.** ``checkpoint(resume)`` is called once the session is
  open and again after confirmed parts, with::

      {"v": 1, "kind": service.kind, "session": {...}, "part_size": P,
       "size": N, "parts": {"1": "<token>", ...}}

  Session keys that start with ``_`` are kept in memory for this call only
  and never checkpointed: put presigned URLs and other signed material there.
  Each checkpoint rewrites every part's token, so a checkpoint per part is
  quadratic in the part count (10,000 parts: 2.4 GB written, a minute of
  CPU). The state is saved after a confirmed part when the parts not saved
  yet reach ``1/``:data:`SHARE` of those confirmed (so after each of the
  first :data:`SHARE`), or :data:`CHECKPOINT_EVERY` seconds have passed since
  the last save, and always when the loop ends (finished, failed or
  cancelled): linear in the part count. A crash loses at most that share of
  the confirmed parts (78 of 10,000), which are sent again.
* **Resuming.** Given a ``resume`` of this ``kind`` whose session has the
  service's ``session_fields`` and whose size, part size and part numbers are
  consistent with the file, only the missing parts are sent, then the
  session is finished. The recorded part size wins over the configured one,
  so a config change does not restart uploads in flight. An unusable
  ``resume`` (other version, other size, malformed) is aborted on the remote
  side (best effort) and the upload starts over.
* **Expiry.** :class:`~syncd.errors.ExpiredError` from ``send_part`` means a
  presigned URL or policy expired: the driver sends that part again at once,
  at most :data:`MAX_RENEWALS` times; ``send_part`` signs every attempt
  afresh. A service that cannot sign again raises :class:`SessionLost`
  instead, which starts a fresh session once per call (:data:`MAX_RESTARTS`).
* **Concurrency.** :class:`Parallel`: parts of one file in flight at once,
  and one bound on part requests across every file of a destination (the
  ``parallel_parts`` and ``max_connections`` options, :func:`parallel_parts_option`).
* **Empty files.** ``PartRules.empty_parts`` says how a 0-byte file is sent:
  as one empty part (``1``, S3) or as no part at all (``0``: open, then finish
  with an empty list).

Every other error propagates unchanged: the uploader retries the whole
``upload()`` later with the last checkpoint, which then sends only what is
missing. The driver never aborts on its own after an error; the uploader
calls ``Destination.abort(resume)`` when it abandons a file.

This module is the loop and the contract; the parts (rules, planning,
reading) are :mod:`._chunked_parts`, the resume state
:mod:`._chunked_resume`, parts in flight at once :mod:`._chunked_parallel`.
Services import every name from here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from syncd.destinations._chunked_parallel import SERIAL, Parallel, send_parallel
from syncd.destinations._chunked_parts import (
    S3_MAX_PARTS,
    Part,
    PartRules,
    choose_part_size,
    part_count,
    plan_parts,
)
from syncd.destinations._chunked_resume import (
    RESUME_VERSION,
    ResumeState,
    SessionFormat,
    Spec,
    is_resume_for,
    read_from,
    session_fits,
    usable,
)
from syncd.destinations.base import Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import max_connections_option, parallel_parts_option
from syncd.errors import ExpiredError, RetryableError, describe
from syncd.logs import quoted_path

log = logging.getLogger(__name__)

MAX_RENEWALS = 3  # immediate resends of one part after ExpiredError, within one call
MAX_RESTARTS = 1  # fresh sessions after SessionLost within one call
SHARE = 128  # a checkpoint once the unsaved parts are 1/SHARE of the confirmed ones
CHECKPOINT_EVERY = 1.0  # seconds: or once this long has passed since the last one


class SessionLost(RetryableError):
    """The remote side no longer knows the session (unknown upload id, deleted session).

    Raised by a service's ``send_part`` or ``finish`` (or by
    :meth:`~syncd.destinations._api.Api.call` with ``session=True``, for the
    service's lost statuses); the driver opens a new session and sends every
    part again (once per call). When it reaches the uploader it is an
    ordinary retryable error.
    """


@dataclass
class Opened:
    """What ``ChunkedService.open`` returns.

    ``session`` is the service's resumable state (JSON-serialisable; keys
    starting with ``_`` are not checkpointed). ``part_size`` is set only when
    the server dictates the part size (it then overrides the planned one).
    """

    session: dict[str, Any]
    part_size: int | None = None


class ChunkedService(SessionFormat, Protocol):
    """What a service implements to be driven by :func:`run`.

    Its ``kind``, ``rules`` and ``session_fields`` are a :class:`SessionFormat`.
    Every method may raise the errors of :mod:`syncd.errors` (mapped through
    :mod:`syncd.http`); ``send_part`` may also raise ``ExpiredError`` (sent
    again at once) and ``send_part``/``finish`` may raise :class:`SessionLost`.
    Implementations keep no per-file state on ``self``: several files are
    uploaded through one instance at the same time.
    """

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        """Open a remote upload session for ``item``, to be sent in parts of ``part_size``."""
        ...

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        """Send one part; return its token (an ETag, or any non-empty string).

        Called with a fresh ``part`` reading per attempt; signs what it sends
        afresh on each. May update ``session`` in place (say, an id the first
        part returned); that only works with one part in flight. A missing
        token is a RetryableError.
        """
        ...

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        """Complete the upload from ``(number, token)`` pairs in ascending order."""
        ...

    def abort(self, session: dict[str, Any]) -> None:
        """Release the remote session. Errors propagate; the driver logs them."""
        ...


# -- the loop -------------------------------------------------------------------


def run(
    service: ChunkedService,
    item: UploadItem,
    source: Source,
    resume: dict[str, Any] | None,
    checkpoint: Checkpoint,
    *,
    parallel: Parallel = SERIAL,
) -> Receipt:
    """Upload ``source`` in parts through ``service``; see the module docstring.

    ``parallel.per_file`` parts of this file may be in flight at once, and
    every part request holds one of the destination's ``parallel`` slots.
    """
    state = usable(service, resume, source.size, source.ctime_ns)
    if state is None:
        if is_resume_for(service, resume):
            assert resume is not None
            why = (
                "the file was changed since its first parts were sent"
                if not read_from(resume, source.ctime_ns)
                else "the saved upload state does not match this file"
            )
            log.info("%s: %s; starting over: %s", service.kind, why, quoted_path(item.relpath))
            abort(service, resume)
        elif resume:  # another way of sending it (the config changed), or an older syncd's
            log.info(
                "%s: the saved upload state is not one this upload can go on from; starting over: %s",
                service.kind,
                quoted_path(item.relpath),
            )
        state = _open(service, item, source, checkpoint)
    restarts = 0
    while True:
        try:
            _send_missing(service, source, state, checkpoint, parallel)
            source.check_unchanged(path=False)  # never complete bytes that changed under us
            parts = sorted((int(n), token) for n, token in state.parts.items())
            return service.finish(state.session, parts)
        except SessionLost as exc:
            if restarts >= MAX_RESTARTS:
                raise
            restarts += 1
            log.warning("%s: the remote session is gone (%s); opening a new one", service.kind, describe(exc))
            state = _open(service, item, source, checkpoint)


def abort(service: ChunkedService, resume: dict[str, Any] | None) -> bool:
    """Best-effort release of the session in ``resume``; True if one was aborted.

    Tolerates any ``resume`` (other kinds, versions, garbage); logs and
    swallows every error.
    """
    if not is_resume_for(service, resume):
        return False
    assert resume is not None
    try:
        service.abort(dict(resume["session"]))
    except Exception as exc:  # best effort by contract: log, never raise
        log.warning("%s: could not abort the remote upload: %s", service.kind, describe(exc))
        return False
    return True


def _open(service: ChunkedService, item: UploadItem, source: Source, checkpoint: Checkpoint) -> ResumeState:
    rules = service.rules
    preferred = rules.part_size if rules.part_size is not None else max(source.size, 1)
    part_size = choose_part_size(source.size, preferred, rules)
    opened = service.open(item, source, part_size)
    if opened.part_size is not None:
        if opened.part_size < 1 and source.size > 0:
            raise RetryableError(
                f"{service.kind}: the server dictated part size {opened.part_size}", garbled=True
            )
        part_size = max(opened.part_size, 1)
    state = ResumeState(service.kind, dict(opened.session), part_size, source.size, ctime_ns=source.ctime_ns)
    checkpoint(state.to_resume())
    return state


def _send_one(service: ChunkedService, state: ResumeState, part: Part, parallel: Parallel) -> str:
    resends = 0
    while True:
        try:
            with parallel.slot():
                token = service.send_part(state.session, part)
        except ExpiredError as exc:
            if resends >= MAX_RENEWALS:
                raise
            resends += 1
            log.info(
                "%s: part %d: %s; sending it again (%d/%d)",
                service.kind,
                part.number,
                describe(exc),
                resends,
                MAX_RENEWALS,
            )
            continue
        if not isinstance(token, str) or not token:
            raise RetryableError(
                f"{service.kind}: part {part.number}: the server confirmed no token", garbled=True
            )
        return token


class _Saver:
    """Checkpoints ``state`` as parts are confirmed: once the unsaved ones are
    ``1/SHARE`` of all confirmed, or :data:`CHECKPOINT_EVERY` seconds after the
    last save; :meth:`flush` saves what is left."""

    def __init__(self, state: ResumeState, checkpoint: Checkpoint) -> None:
        self._state = state
        self._checkpoint = checkpoint
        self._saved_at = time.monotonic()
        self._unsaved = 0

    def confirmed(self, part: Part, token: str) -> None:
        self._state.parts[str(part.number)] = token
        self._unsaved += 1
        if (
            self._unsaved * SHARE >= len(self._state.parts)
            or time.monotonic() - self._saved_at >= CHECKPOINT_EVERY
        ):
            self.flush()

    def flush(self) -> None:
        if self._unsaved:
            self._unsaved = 0  # a checkpoint the ledger refused is not tried again on the way out
            self._checkpoint(self._state.to_resume())
            self._saved_at = time.monotonic()


def _send_missing(
    service: ChunkedService, source: Source, state: ResumeState, checkpoint: Checkpoint, parallel: Parallel
) -> None:
    todo = [p for p in plan_parts(source, state.part_size, service.rules) if str(p.number) not in state.parts]
    saver = _Saver(state, checkpoint)  # records on this thread, as each part is confirmed
    try:
        if parallel.per_file <= 1 or len(todo) <= 1:
            for part in todo:
                saver.confirmed(part, _send_one(service, state, part, parallel))
        else:
            send_parallel(
                todo,
                lambda part: _send_one(service, state, part, parallel),
                saver.confirmed,
                parallel.per_file,
            )
    finally:  # a failed or cancelled upload resumes from every part confirmed
        saver.flush()


__all__ = [
    "CHECKPOINT_EVERY",
    "MAX_RENEWALS",
    "MAX_RESTARTS",
    "RESUME_VERSION",
    "SHARE",
    "S3_MAX_PARTS",
    "SERIAL",
    "ChunkedService",
    "Opened",
    "Parallel",
    "Part",
    "PartRules",
    "SessionFormat",
    "SessionLost",
    "Spec",
    "abort",
    "choose_part_size",
    "is_resume_for",
    "max_connections_option",
    "parallel_parts_option",
    "part_count",
    "plan_parts",
    "read_from",
    "run",
    "session_fits",
]
