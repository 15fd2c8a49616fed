"""The destination contract: how a file's bytes reach one remote service.

A destination is constructed once per ``[destinations.NAME]`` table with its
validated options and the shared HTTP client, and is then used by many
uploader threads at once. It must therefore keep no per-file state on
``self``; everything about one upload lives in the ``resume`` dict.

The uploader calls, for one file version::

    receipt = dest.upload(item, source, resume, checkpoint)

``item``
    What to upload and with which metadata (:class:`UploadItem`).
``source``
    The opened local file (:class:`Source`). Read bytes only through it: it
    hashes what is read, and it raises :class:`~syncd.errors.SourceChangedError`
    when the file changes under the upload.
``resume``
    ``None`` for a first attempt; otherwise the last dict this destination
    passed to ``checkpoint`` for this file version, possibly from a previous
    process that crashed. A destination must treat any key it does not
    recognise, or a ``resume`` whose ``"v"`` it does not know, as "start over".
``checkpoint(state)``
    Persists ``state`` (a JSON-serialisable dict, no secrets) durably in the
    ledger before returning. Call it after every step the remote side has
    durably accepted (an upload session opened, a part confirmed), so that a
    crash after the call resumes *after* that step. It may raise
    :class:`~syncd.errors.FatalError` when the ledger cannot be written.

``upload`` returns a :class:`Receipt` once the remote side has confirmed the
whole file. It raises, and only raises, the errors of :mod:`syncd.errors`:

* :class:`~syncd.errors.RetryableError` for transport failures, 408, 429,
  5xx, and anything else that may work later (``retry_after`` set from the
  server's hint). Resumable state already checkpointed stays valid.
* :class:`~syncd.errors.ExpiredError` is handled inside the destination
  where possible: re-sign or reopen and continue.
* :class:`~syncd.errors.PermanentError` when the service rejects this file
  for good (4xx other than 408/429, a refused type, too large).
* :class:`~syncd.errors.FatalError` when no file can succeed until an
  operator acts (credentials rejected).
* :class:`~syncd.errors.SourceChangedError` propagates from ``source``.

Idempotence: ``upload`` may be called again with the same ``resume`` after
any failure or crash, any number of times. It must then send only what the
remote side does not already hold, and it must never produce two remote
objects for one ledger row where the service lets it avoid that (the row's
``uuid`` is the natural idempotency key).

``abort(resume)`` releases whatever a half-finished upload holds on the
remote side (cancel a multipart upload, delete a session). It is called when
an upload is abandoned: the file changed, vanished, or failed for good. It is
best-effort: it logs and swallows errors, and must tolerate a ``resume``
from an older version or an upload that already completed.

``probe()`` checks reachability and credentials without uploading anything
(``syncd check --online``); it returns a short human-readable line or raises
an :class:`~syncd.errors.UploadError`.

``close()`` releases per-destination resources (cached tokens, sessions).
The shared HTTP client is closed by its owner, not here.

Metadata: ``CAPABILITIES`` says which of the folder's ``labels`` and
``category`` this type can deliver; ``syncd check`` warns about the rest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from syncd.errors import SourceChangedError, SourceMovedError

Checkpoint = Callable[[dict[str, Any]], None]

READ_BLOCK = 256 * 1024


@dataclass(frozen=True)
class Capabilities:
    """Which folder metadata a destination type can deliver, and how."""

    labels: str | None  # how labels are delivered, or None when they cannot be
    category: str | None  # how the category is delivered, or None


def wire_name(text: str) -> str:
    """A file name (or relative path) as valid Unicode for the wire.

    Names are bytes on Linux; a name that is not valid UTF-8 reaches Python
    with surrogate escapes, which no JSON body, header or form can carry.
    Each undecodable byte becomes ``‛`` followed by its two hex digits
    (rclone's convention: ``b"a\\xfe"`` -> ``"a‛FE"``), so the name stays
    readable and distinct. Valid names are returned unchanged.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\u201b{code - 0xDC00:02X}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class UploadItem:
    """One file version to upload and the metadata that goes with it."""

    uuid: str  # stable per ledger row; the idempotency key
    name: str  # base name, valid Unicode (see wire_name)
    relpath: str  # path relative to the watched folder, "/"-separated, valid Unicode
    size: int
    content_type: str
    labels: tuple[str, ...] = ()
    category: str | None = None


@dataclass(frozen=True)
class Receipt:
    """The remote side's confirmation of one upload. Stored as JSON in the ledger.

    ``url`` never carries a query string (signatures live there).
    """

    remote_id: str
    url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"remote_id": self.remote_id, "url": self.url, **self.details}


class Source:
    """A regular file opened for upload, with change detection and hashing.

    The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with
    ``fstat`` to be a regular file with the expected inode, so a symlink or a
    FIFO swapped in after settling is refused without blocking. Reads go
    through ``pread`` on that descriptor, so a rename of the path during the
    upload does not matter. Every read re-checks size and mtime against the
    values settled on; a difference raises :class:`SourceChangedError`.

    The SHA-256 of the content is computed from the bytes as they are read
    in order. Ranges read out of order, or skipped on resume, are hashed by
    :meth:`sha256` with one extra local read of what was not yet hashed.
    """

    def __init__(self, path: str | bytes, *, size: int, mtime_ns: int, inode: int) -> None:
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        self.inode = inode
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # it became a symlink after settling
                raise SourceChangedError("the file was replaced by a symlink") from exc
            raise
        self._lock = threading.Lock()
        self._hasher = hashlib.sha256()
        self._hashed_upto = 0
        self.bytes_read = 0
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceChangedError("the path is no longer a regular file")
            self._verify(st)
            self._ctime_ns = st.st_ctime_ns
        except BaseException:
            os.close(self._fd)
            raise

    def _verify(self, st: os.stat_result) -> None:
        if st.st_ino != self.inode:
            raise SourceChangedError("the file was replaced (inode changed)")
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            raise SourceChangedError(
                f"the file changed during upload (size {self.size} -> {st.st_size})"
            )

    def check_unchanged(self) -> None:
        """Called once the upload is confirmed: are the bytes read still the file's?

        * size, mtime or inode of the open file changed: SourceChangedError;
        * its ctime changed (a rename, a chmod, or a rewrite that restored the
          mtime): the file is hashed again and must match what was read,
          else SourceChangedError;
        * the bytes are intact but the path no longer leads to this file
          (renamed, deleted, or replaced by a new file): SourceMovedError.
        """
        st = os.fstat(self._fd)
        self._verify(st)
        if st.st_ctime_ns != self._ctime_ns and self._rehash() != self.sha256():
            raise SourceChangedError(
                "the file was rewritten during upload (same size and mtime, other bytes)")
        try:
            at_path = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise SourceMovedError("the file was moved or deleted during upload") from None
        if (at_path.st_ino, at_path.st_dev) != (st.st_ino, st.st_dev):
            raise SourceMovedError("the file was replaced by another file during upload")

    def _rehash(self) -> str:
        h = hashlib.sha256()
        pos = 0
        while pos < self.size:
            data = os.pread(self._fd, min(READ_BLOCK, self.size - pos), pos)
            if not data:
                break
            h.update(data)
            pos += len(data)
        return h.hexdigest()

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (short only at end of file)."""
        chunks = list(self.iter_range(offset, length))
        return b"".join(chunks)

    def iter_range(self, offset: int, length: int, block: int = READ_BLOCK) -> Iterator[bytes]:
        """Yield the bytes of ``[offset, offset+length)`` in blocks, hashing in order."""
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            data = os.pread(self._fd, min(block, end - pos), pos)
            if not data:
                raise SourceChangedError(f"the file was truncated during upload (at byte {pos})")
            self._account(pos, data)
            pos += len(data)
            yield data
        self._verify(os.fstat(self._fd))

    def _account(self, pos: int, data: bytes) -> None:
        with self._lock:
            self.bytes_read += len(data)
            if pos == self._hashed_upto:
                self._hasher.update(data)
                self._hashed_upto += len(data)

    def sha256(self) -> str:
        """The hex SHA-256 of the whole file, reading whatever was not hashed yet."""
        while self._hashed_upto < self.size:
            pos = self._hashed_upto
            data = os.pread(self._fd, min(READ_BLOCK, self.size - pos), pos)
            if not data:
                raise SourceChangedError(f"the file was truncated during upload (at byte {pos})")
            with self._lock:
                if pos == self._hashed_upto:
                    self._hasher.update(data)
                    self._hashed_upto += len(data)
        return self._hasher.hexdigest()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Destination(Protocol):
    """See the module docstring: it is the contract.

    Implementations are constructed as ``cls(name, options, client)`` where
    ``options`` is an instance of ``cls.Options`` (a frozen dataclass whose
    fields are the type's config keys, validated by :mod:`syncd.config`) and
    ``client`` is the daemon's shared :class:`httpx.Client`.
    """

    TYPE: ClassVar[str]
    CAPABILITIES: ClassVar[Capabilities]
    Options: ClassVar[type]

    name: str

    def upload(
        self,
        item: UploadItem,
        source: Source,
        resume: dict[str, Any] | None,
        checkpoint: Checkpoint,
    ) -> Receipt: ...

    def abort(self, resume: dict[str, Any]) -> None: ...

    def probe(self) -> str: ...

    def close(self) -> None: ...
