"""The multi-part upload loop, written once for every service (style.md §3).

S3-style parts (Lilt multipart, WriftAI uploads), chunked form posts (Xvid)
and Content-Range chunks (api.video) are all the same loop: *open a session,
send part n, checkpoint after every confirmed part, finish, or abort*. This
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
  open and again after **every** confirmed part, with::

      {"v": 1, "kind": service.kind, "session": {...}, "part_size": P,
       "size": N, "parts": {"1": "<token>", ...}}

  Session keys that start with ``_`` are kept in memory for this call only
  and never checkpointed: put presigned URLs and other signed material there.
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
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.destinations.base import Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import max_connections_option, parallel_parts_option
from syncd.errors import ExpiredError, PermanentError, RetryableError, describe

log = logging.getLogger(__name__)

RESUME_VERSION = 1
MAX_RENEWALS = 3  # immediate resends of one part after ExpiredError, within one call
MAX_RESTARTS = 1  # fresh sessions after SessionLost within one call
S3_MAX_PARTS = 10_000


class SessionLost(RetryableError):
    """The remote side no longer knows the session (unknown upload id, deleted session).

    Raised by a service's ``send_part`` or ``finish`` (or by
    :meth:`~syncd.destinations._api.Api.call` with ``session=True``, for the
    service's lost statuses); the driver opens a new session and sends every
    part again (once per call). When it reaches the uploader it is an
    ordinary retryable error.
    """


@dataclass(frozen=True)
class PartRules:
    """A service's parts: the size it asks for and its limits. Sizes in bytes."""

    part_size: int | None = None  # the size to send; None: the whole file (or what open() dictates)
    min_size: int = 1  # every part but the last is at least this big
    max_size: int | None = None  # no part may be bigger
    multiple: int = 1  # part sizes must be a multiple of this
    max_parts: int = S3_MAX_PARTS
    empty_parts: int = 1  # a 0-byte file is sent as one empty part (1) or none (0)

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.multiple < 1 or self.max_parts < 1:
            raise ValueError("min_size, multiple and max_parts must be >= 1")
        if self.empty_parts not in (0, 1):
            raise ValueError("empty_parts must be 0 or 1")


@dataclass(frozen=True)
class Part:
    """Part ``number`` (1-based) of ``count``: bytes ``[offset, offset + size)``."""

    number: int
    offset: int
    size: int
    count: int
    file_size: int
    source: Source = field(repr=False, compare=False)

    @property
    def last(self) -> bool:
        return self.number == self.count

    @property
    def end(self) -> int:
        """The offset just past this part (exclusive)."""
        return self.offset + self.size

    def stream(self) -> Iterator[bytes]:
        """A fresh iterator over the part's bytes (hashed, change-checked); one per attempt."""
        return self.source.iter_range(self.offset, self.size)

    def read(self) -> bytes:
        """The part's bytes in memory (for protocols that cannot stream a part)."""
        return self.source.read(self.offset, self.size)

    def file(self) -> io.RawIOBase:
        """The part as a seekable binary file: the body of a form field (httpx ``files=``)."""
        return _PartFile(self)


class _PartFile(io.RawIOBase):
    """One part as a seekable binary file, for httpx's multipart encoder.

    httpx learns the length by seeking, then reads 64 KiB at a time: the part
    streams from the :class:`Source` (hashed, change-checked), never whole.
    """

    def __init__(self, part: Part) -> None:
        super().__init__()
        self._part = part
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._part.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._part.size - self._pos)
        if n <= 0:
            return 0
        data = self._part.source.read(self._part.offset + self._pos, n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass
class Opened:
    """What ``ChunkedService.open`` returns.

    ``session`` is the service's resumable state (JSON-serialisable; keys
    starting with ``_`` are not checkpointed). ``part_size`` is set only when
    the server dictates the part size (it then overrides the planned one).
    """

    session: dict[str, Any]
    part_size: int | None = None


class Parallel:
    """How many part requests may be in flight: ``per_file`` parts of one file,
    and at most ``connections`` across every file of one destination."""

    def __init__(self, per_file: int = 1, connections: int | None = None) -> None:
        self.per_file = per_file
        self._slots = threading.BoundedSemaphore(connections) if connections else None

    @classmethod
    def of(cls, options: Any) -> Parallel:
        """From a type's ``parallel_parts`` and ``max_connections`` options."""
        return cls(options.parallel_parts, options.max_connections)

    def slot(self) -> contextlib.AbstractContextManager[Any]:
        """Held while one part request is in flight."""
        return self._slots if self._slots is not None else contextlib.nullcontext()


SERIAL = Parallel()


class ChunkedService(Protocol):
    """What a service implements to be driven by :func:`run`.

    Every method may raise the errors of :mod:`syncd.errors` (mapped through
    :mod:`syncd.http`); ``send_part`` may also raise ``ExpiredError`` (sent
    again at once) and ``send_part``/``finish`` may raise :class:`SessionLost`.
    Implementations keep no per-file state on ``self``: several files are
    uploaded through one instance at the same time.
    """

    kind: str  # the resume's "kind"; change it when the session format changes
    rules: PartRules

    @property
    def session_fields(self) -> Mapping[str, Spec]:
        """What a checkpointed session must hold: key -> :data:`Spec` (see :func:`session_fits`)."""
        ...

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


# -- the session's fields -------------------------------------------------------

#: One entry of ``session_fields``: a type (``str``: non-empty; ``int``: >= 0, no bool;
#: ``bool``), or a tuple of types, literal values and ``None`` (the key may be absent or null).
Spec = type | tuple[Any, ...]


def _fits(value: Any, spec: Spec) -> bool:
    allowed = spec if isinstance(spec, tuple) else (spec,)
    if value is None:
        return None in allowed
    if isinstance(value, bool):
        return bool in allowed
    if any(value == a for a in allowed if a is not None and not isinstance(a, type)):
        return True
    if isinstance(value, int):
        return int in allowed and value >= 0
    return isinstance(value, str) and str in allowed and value != ""


def session_fits(fields: Mapping[str, Spec], session: dict[str, Any]) -> bool:
    """Whether ``session`` holds every field as ``fields`` describes it."""
    return all(_fits(session.get(key), spec) for key, spec in fields.items())


# -- planning -----------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def part_count(size: int, part_size: int, empty_parts: int = 1) -> int:
    """How many parts a file of ``size`` bytes has with parts of ``part_size``."""
    if size == 0:
        return empty_parts
    return -(-size // part_size)


def choose_part_size(size: int, preferred: int, rules: PartRules) -> int:
    """The part size to use: ``preferred`` adjusted to ``rules`` (see the module docstring).

    Raises PermanentError when the file cannot be sent within ``max_parts``
    parts of at most ``max_size`` bytes.
    """
    part_size = _round_up(max(preferred, rules.min_size, 1), rules.multiple)
    if rules.max_size is not None and part_size > rules.max_size:
        part_size = max(rules.max_size // rules.multiple * rules.multiple, rules.multiple)
    if part_count(size, part_size) > rules.max_parts:
        part_size = _round_up(-(-size // rules.max_parts), rules.multiple)
        if rules.max_size is not None and part_size > rules.max_size:
            raise PermanentError(
                f"the file is too large: {size} bytes need more than {rules.max_parts} parts "
                f"of at most {rules.max_size} bytes"
            )
    return part_size


def plan_parts(source: Source, part_size: int, rules: PartRules) -> list[Part]:
    """Every part of ``source``, in order."""
    size = source.size
    count = part_count(size, part_size, rules.empty_parts)
    return [
        Part(number=n, offset=(n - 1) * part_size,
             size=min(part_size, size - (n - 1) * part_size), count=count,
             file_size=size, source=source)
        for n in range(1, count + 1)
    ]


# -- resume state ---------------------------------------------------------------


@dataclass
class _State:
    kind: str
    session: dict[str, Any]
    part_size: int
    size: int
    parts: dict[str, str] = field(default_factory=dict)

    def to_resume(self) -> dict[str, Any]:
        session = {k: v for k, v in self.session.items() if not k.startswith("_")}
        return {"v": RESUME_VERSION, "kind": self.kind, "session": session,
                "part_size": self.part_size, "size": self.size, "parts": dict(self.parts)}


def is_resume_for(service: ChunkedService, resume: dict[str, Any] | None) -> bool:
    """Whether ``resume`` was written by the driver for ``service`` (any size)."""
    return (isinstance(resume, dict) and resume.get("v") == RESUME_VERSION
            and resume.get("kind") == service.kind and isinstance(resume.get("session"), dict)
            and session_fits(service.session_fields, resume["session"]))


def _usable(service: ChunkedService, resume: dict[str, Any] | None, size: int) -> _State | None:
    """The state to continue from, or None when ``resume`` cannot be trusted for this file."""
    if resume is None or not is_resume_for(service, resume):
        return None
    part_size, parts, rules = resume.get("part_size"), resume.get("parts"), service.rules
    if resume.get("size") != size or type(part_size) is not int or part_size < 1:
        return None
    count = part_count(size, part_size, rules.empty_parts)
    if count > rules.max_parts:
        return None
    if count > 1 and (part_size < rules.min_size or part_size % rules.multiple
                      or (rules.max_size is not None and part_size > rules.max_size)):
        return None
    if not isinstance(parts, dict):
        return None
    for number, token in parts.items():
        if not (isinstance(number, str) and number.isdigit() and 1 <= int(number) <= count
                and isinstance(token, str) and token):
            return None
    return _State(service.kind, dict(resume["session"]), part_size, size, dict(parts))


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
    state = _usable(service, resume, source.size)
    if state is None:
        if is_resume_for(service, resume):
            log.info("%s: the saved upload state does not match this file; starting over",
                     service.kind)
            abort(service, resume)
        state = _open(service, item, source, checkpoint)
    restarts = 0
    while True:
        try:
            _send_missing(service, source, state, checkpoint, parallel)
            source.check_unchanged()  # never complete a file that changed under us
            parts = sorted((int(n), token) for n, token in state.parts.items())
            return service.finish(state.session, parts)
        except SessionLost as exc:
            if restarts >= MAX_RESTARTS:
                raise
            restarts += 1
            log.warning("%s: the remote session is gone (%s); opening a new one",
                        service.kind, describe(exc))
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


def _open(service: ChunkedService, item: UploadItem, source: Source,
          checkpoint: Checkpoint) -> _State:
    rules = service.rules
    preferred = rules.part_size if rules.part_size is not None else max(source.size, 1)
    part_size = choose_part_size(source.size, preferred, rules)
    opened = service.open(item, source, part_size)
    if opened.part_size is not None:
        if opened.part_size < 1 and source.size > 0:
            raise RetryableError(
                f"{service.kind}: the server dictated part size {opened.part_size}")
        part_size = max(opened.part_size, 1)
    state = _State(service.kind, dict(opened.session), part_size, source.size)
    checkpoint(state.to_resume())
    return state


def _send_one(service: ChunkedService, state: _State, part: Part, parallel: Parallel) -> str:
    resends = 0
    while True:
        try:
            with parallel.slot():
                token = service.send_part(state.session, part)
        except ExpiredError as exc:
            if resends >= MAX_RENEWALS:
                raise
            resends += 1
            log.info("%s: part %d: %s; sending it again (%d/%d)",
                     service.kind, part.number, describe(exc), resends, MAX_RENEWALS)
            continue
        if not isinstance(token, str) or not token:
            raise RetryableError(
                f"{service.kind}: part {part.number}: the server confirmed no token")
        return token


def _send_missing(service: ChunkedService, source: Source, state: _State,
                  checkpoint: Checkpoint, parallel: Parallel) -> None:
    todo = [p for p in plan_parts(source, state.part_size, service.rules)
            if str(p.number) not in state.parts]
    if parallel.per_file <= 1 or len(todo) <= 1:
        for part in todo:
            token = _send_one(service, state, part, parallel)
            state.parts[str(part.number)] = token
            checkpoint(state.to_resume())
        return
    _send_parallel(service, state, todo, checkpoint, parallel)


def _send_parallel(service: ChunkedService, state: _State, todo: list[Part],
                   checkpoint: Checkpoint, parallel: Parallel) -> None:
    """Up to ``per_file`` parts in flight; results recorded and checkpointed on this thread."""
    pending = iter(todo)
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=parallel.per_file, thread_name_prefix="part") as pool:
        running: dict[Future[str], Part] = {}

        def submit_next() -> None:
            part = next(pending, None)
            if part is not None:
                running[pool.submit(_send_one, service, state, part, parallel)] = part

        for _ in range(parallel.per_file):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                part = running.pop(future)
                try:
                    token = future.result()
                except BaseException as exc:  # keep the first; let the others finish
                    error = error or exc
                    continue
                state.parts[str(part.number)] = token
                checkpoint(state.to_resume())
                if error is None:
                    submit_next()
    if error is not None:
        raise error


__all__ = [
    "MAX_RENEWALS", "MAX_RESTARTS", "SERIAL", "ChunkedService", "Opened", "Parallel", "Part",
    "PartRules", "SessionLost", "Spec", "abort", "choose_part_size", "is_resume_for",
    "max_connections_option", "parallel_parts_option", "part_count", "plan_parts", "run",
    "session_fits",
]
