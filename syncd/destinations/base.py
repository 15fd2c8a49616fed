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

Optional class methods that ``syncd`` uses when a type defines them:
``capabilities_for(options) -> Capabilities`` (what *these* options can
deliver, when that depends on them), ``check_warnings(options, folder) ->
list[str]`` (what ``syncd check`` should warn about for one folder), and
``reveal_receipt(options, receipt) -> dict`` (a stored receipt with the URLs
it keeps sealed opened, for ``syncd files --receipt``; ValueError when the
configured secret cannot open them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from syncd import redact, safefs
from syncd.destinations.options import credential as credential  # re-exported
from syncd.errors import SourceChangedError, SourceMovedError
from syncd.hashing import BLOCK, StreamHash

Checkpoint = Callable[[dict[str, Any]], None]

READ_BLOCK = BLOCK  # 1 MiB reads: few system calls, few Python iterations per GiB


@dataclass(frozen=True)
class Capabilities:
    """Which folder metadata a destination type can deliver, and how."""

    labels: str | None  # how labels are delivered, or None when they cannot be
    category: str | None  # how the category is delivered, or None
    note: str = ""  # why what is None cannot be delivered, when it depends on the options


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

    ``url`` never carries a query string (signatures live there). A URL that
    works only whole (a signed download URL, a private video's token) is also
    kept sealed in ``details`` (:mod:`syncd.destinations._receipts`).
    """

    remote_id: str
    url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As the ledger stores it: what looks like a secret in the service's text (an id
        or a URL that echoes a credential) is masked (:func:`syncd.redact.redact_json`);
        sealed values are opaque and pass."""
        stored: dict[str, Any] = redact.redact_json(
            {"remote_id": self.remote_id, "url": self.url, **self.details}
        )
        return stored


class Source:
    """A regular file opened for upload, with change detection and hashing.

    The file is opened through :mod:`syncd.safefs`: from a descriptor of
    its trusted ``root`` (the watched folder, or failed_dir for a retried
    file), refusing a symlink at every component of the path, and
    non-blocking. ``fstat`` then checks that it is a regular file with the
    expected device and inode, so a symlink, a FIFO or another file swapped
    in after settling is refused. Reads go through ``pread`` on that
    descriptor, so a rename of the path during the upload does not matter,
    and the bytes uploaded are those of the inode that settled. Every read
    re-checks size and mtime against the values settled on; a difference
    raises :class:`SourceChangedError`.

    The SHA-256 of the content is computed from the bytes as they are read
    in order. Ranges read out of order, or skipped on resume, are hashed by
    :meth:`sha256` with one extra local read of what was not yet hashed.

    Without ``root``, the file's own directory is the root (tests, tools).
    ``fd`` is a descriptor of the file opened already (an upload helper's copy
    of the worker's, :mod:`syncd.offload`): it is checked the same way and
    closed with the Source. ``on_read`` is called after every block read.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: int,
        mtime_ns: int,
        inode: int,
        device: int | None = None,
        root: str | None = None,
        fd: int | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        path = self.path = os.fspath(path)
        self.size = size
        self.mtime_ns = mtime_ns
        self.inode = inode
        self.device = device
        if root is None:
            self._root, self._rel = os.path.dirname(path) or ".", os.path.basename(path)
        else:
            self._root, self._rel = safefs.anchor(path, [root])
        self.on_read = on_read
        self._lock = threading.Lock()
        self._hash: StreamHash | None = None
        self._sha256: str | None = None  # hashed elsewhere (hashed_as)
        self.bytes_read = 0
        if fd is not None:
            self._fd = fd
        else:
            try:
                self._fd = safefs.open_file(self._root, self._rel)
            except safefs.UnsafePath as exc:  # it (or a directory above it) became a symlink
                raise SourceChangedError("the file was replaced by a symlink") from exc
            except NotADirectoryError as exc:
                raise FileNotFoundError(errno.ENOENT, "a directory on the way was replaced", path) from exc
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceChangedError("the path is no longer a regular file")
            self._verify(st)
            self._ctime_ns = self.checked_ctime_ns = st.st_ctime_ns
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """The open descriptor (archiving links or copies from it: the bytes uploaded)."""
        return self._fd

    @property
    def ctime_ns(self) -> int:
        """The file's inode change time when it was opened (a resume state records it).
        ``checked_ctime_ns``: the one at which :meth:`check_unchanged` last found the bytes
        read still the file's (a kept file's row records it: syncd/kept.py)."""
        return self._ctime_ns

    def _verify(self, st: os.stat_result) -> None:
        if st.st_ino != self.inode or (self.device is not None and st.st_dev != self.device):
            raise SourceChangedError("the file was replaced (inode changed)")
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            raise SourceChangedError(f"the file changed during upload (size {self.size} -> {st.st_size})")

    def check_unchanged(self, *, path: bool = True) -> None:
        """Called once the upload is confirmed: are the bytes read still the file's?

        * size, mtime or inode of the open file changed: SourceChangedError;
        * its ctime changed (a rename, a chmod, or a rewrite that restored the
          mtime): the file is hashed again and must match what was read,
          else SourceChangedError;
        * the bytes are intact but the path no longer leads to this file
          (renamed, deleted, replaced by a new file, or a directory on the
          way swapped for a symlink): SourceMovedError. ``path=False`` leaves
          this out: a destination completing a multi-part upload asks only
          whether the bytes are the file's (where the file went is the
          uploader's to find, after the upload).
        """
        st = os.fstat(self._fd)
        self._verify(st)
        if st.st_ctime_ns != self._ctime_ns:
            sent = self.sha256()  # completes the hash: what was not offered in order is read now
            if self._hash is not None and self._hash.read_itself:
                # part of the hash was read from the file, not from what was sent: a re-hash
                # would agree with it whatever was sent, so which bytes went cannot be told
                raise SourceChangedError(
                    "the file changed during upload (its inode change time), while parts went out "
                    "of order or were resumed: the upload is not trusted"
                )
            if self._rehash() != sent:
                raise SourceChangedError(
                    "the file was rewritten during upload (same size and mtime, other bytes)"
                )
        self.checked_ctime_ns = st.st_ctime_ns
        if not path:
            return
        try:
            at_path = safefs.lstat(self._root, self._rel)
        except (FileNotFoundError, NotADirectoryError, safefs.UnsafePath):
            raise SourceMovedError("the file was moved or deleted during upload") from None
        if not safefs.same_file(at_path, st):
            raise SourceMovedError("the file was replaced by another file during upload")

    def _rehash(self) -> str:
        return StreamHash(self._fd, self.size).hexdigest()

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (short only at end of file)."""
        chunks = list(self.iter_range(offset, length))
        return b"".join(chunks)

    def iter_range(self, offset: int, length: int, block: int = READ_BLOCK) -> Iterator[bytes]:
        """Yield the bytes of ``[offset, offset+length)`` in blocks, hashing in order.

        One ``fstat`` at the end of the range checks size and mtime (none per
        block: the bytes read are hashed, and the end checks catch a change).
        """
        stream = self._stream_hash()
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            data = os.pread(self._fd, min(block, end - pos), pos)
            if not data:
                raise SourceChangedError(f"the file was truncated during upload (at byte {pos})")
            stream.offer(pos, data)
            with self._lock:
                self.bytes_read += len(data)
            pos += len(data)
            if self.on_read is not None:
                self.on_read()
            yield data
        self._verify(os.fstat(self._fd))

    def sha256(self) -> str:
        """The hex SHA-256 of the whole file, reading whatever was not hashed yet."""
        if self._sha256 is not None:
            return self._sha256
        return self._stream_hash().hexdigest()

    def _stream_hash(self) -> StreamHash:
        """The hash of the reads, begun at the first one (a file an upload helper sends
        is never read here, so it never starts a hashing thread)."""
        with self._lock:
            if self._hash is None:
                self._hash = StreamHash(self._fd, self.size)
            return self._hash

    def hashed_as(self, sha256: str) -> None:
        """Another process read and hashed the whole file through this descriptor (an
        upload helper, :mod:`syncd.offload`): :meth:`sha256` is that hash from now on."""
        with self._lock:
            self.bytes_read = self.size
        self._sha256 = sha256

    def close(self) -> None:
        """Close the descriptor; safe to call more than once."""
        if self._hash is not None:
            self._hash.close()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

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
