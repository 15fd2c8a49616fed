"""The SHA-256 of a file being uploaded, computed beside the upload.

A :class:`StreamHash` is told of every block the upload reads
(:meth:`~StreamHash.offer`). Blocks that continue the hash in file order are
hashed. Large files are hashed on a thread of their own, so hashing overlaps
sending instead of adding to it (``hashlib`` releases the GIL on large
buffers): the wire stays full.

The worker owns the hash and its position; blocks in order reach it through
a bounded queue. Blocks ahead of the hash (the later parts of a multi-part
upload sent in parallel) are held until the hash reaches them, up to
``HELD_BYTES``, so each byte is read once, for the wire, and the hash is of
the bytes sent. What cannot be held, and what is never offered (parts
skipped on resume), the worker reads from the file by itself whenever it is
idle ("catch-up"), so the upload does not end with a long sequential read.
Memory stays at a few dozen blocks whatever the file size.

Only the bytes offered are guaranteed to be the bytes sent; ranges read by
the worker itself are the file's bytes at that moment (``read_itself``),
which the caller's change checks (size, mtime, ctime) cover.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading

from syncd.errors import SourceChangedError

BLOCK = 1 << 20
BACKGROUND_FROM = 4 * BLOCK  # smaller files are hashed inline: a thread costs more than it saves
QUEUED_BLOCKS = 8
WAKE = (-1, b"")  # queued to wake the worker: at no position, so never hashed
# Blocks ahead of the hash kept in memory: Lilt's four 8 MiB parts in parallel hold up to
# three parts while the first goes. Larger parts in parallel overflow it, and the worker
# reads the rest from the file.
HELD_BYTES = 32 * BLOCK


class StreamHash:
    """SHA-256 of the ``size`` bytes of ``fd``, fed by the reads of an upload."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._hasher = hashlib.sha256()
        self._upto = 0  # hashed so far (the worker's)
        # some bytes were read from the file here, not taken from the upload's reads (parts
        # out of order, or confirmed by an earlier attempt): they are the file's bytes at
        # that moment, which may not be the ones sent
        self.read_itself = False
        self._offered = 0  # offered in order so far (the readers')
        self._digest: str | None = None
        self._error: SourceChangedError | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[int, bytes] | None] | None = None
        self._thread: threading.Thread | None = None
        self._catch_up = threading.Event()
        # blocks offered ahead of the hash: position -> bytes. Offers and the worker take from
        # it under _held_lock, which is never held while waiting for anything else: the worker
        # must go on while an offer waits for room in the queue (under _lock).
        self._held: dict[int, bytes] = {}
        self._held_bytes = 0
        self._held_lock = threading.Lock()
        if size >= BACKGROUND_FROM:
            self._queue = queue.Queue(QUEUED_BLOCKS)
            self._thread = threading.Thread(target=self._work, name="sha256", daemon=True)
            try:
                self._thread.start()
            except RuntimeError:  # at the thread limit (TasksMax=): hashed on the reading threads
                self._queue = self._thread = None

    def offer(self, pos: int, data: bytes) -> None:
        """A block the upload read at ``pos``; hashed if it continues the hash."""
        if self._queue is None:
            with self._lock:
                if pos == self._upto:
                    self._update(data)
            return
        if self._error is not None or not self._thread_alive():
            return
        with self._held_lock:
            if pos != self._offered:
                if pos > self._offered:  # ahead of the hash: held if there is room
                    if pos not in self._held and self._held_bytes + len(data) <= HELD_BYTES:
                        self._held[pos] = data
                        self._held_bytes += len(data)
                    # whatever was not held, the worker reads from the file when idle
                    if not self._catch_up.is_set():
                        self._catch_up.set()
                        with contextlib.suppress(queue.Full):  # a worker waiting with no
                            self._queue.put_nowait(WAKE)  # timeout takes it up now
                return  # behind it: sent again (a part retried), hashed already
        # in order: one reader at a time queues, so the queue stays in file order; it may wait
        # for room in the queue, and readers of later parts go on holding meanwhile
        with self._lock:
            block: bytes | None = data
            while block is not None:
                with self._held_lock:
                    if pos != self._offered:
                        return  # another reader offered these bytes first
                    self._offered += len(block)
                self._queue.put((pos, block))
                pos += len(block)
                block = self._take_held(pos)  # the held blocks this one joins up to

    def _take_held(self, pos: int) -> bytes | None:
        """The held block at ``pos`` (and forget the blocks the hash has passed)."""
        with self._held_lock:
            data = self._held.pop(pos, None)
            if data is not None:
                self._held_bytes -= len(data)
            for stale in [p for p in self._held if p < pos]:
                self._held_bytes -= len(self._held.pop(stale))
            return data

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _update(self, data: bytes) -> None:
        self._hasher.update(data)
        self._upto += len(data)

    def _read_next(self) -> bool:
        """Read and hash the next block from the file; False at the end."""
        if self._upto >= self._size:
            return False
        data = self._take_held(self._upto) if self._held else None
        if data is None:
            data = os.pread(self._fd, min(BLOCK, self._size - self._upto), self._upto)
            if not data:
                raise SourceChangedError(f"the file was truncated during upload (at byte {self._upto})")
            self.read_itself = True
        self._update(data)
        return True

    def _work(self) -> None:
        assert self._queue is not None
        try:
            while True:
                if self._upto in self._held and self._queue.empty():
                    self._read_next()  # held, and nothing queued will come before it: no wait
                    continue
                try:
                    item = self._queue.get(timeout=0.05 if self._catch_up.is_set() else None)
                except queue.Empty:
                    self._read_next()  # idle while parts go out of order: read ahead
                    continue
                if item is None:
                    while self._read_next():
                        pass
                    return
                pos, data = item
                if pos == self._upto:
                    self._update(data)
        except SourceChangedError as exc:
            self._error = exc
        except OSError as exc:
            self._error = SourceChangedError(f"the file could not be read again: {exc.strerror or exc}")
        finally:
            with self._held_lock:  # nothing held outlives the hash (an offer chaining ends)
                self._held.clear()
                self._held_bytes = 0
            self._drain()

    def _drain(self) -> None:
        """Let a blocked ``offer`` go on once the worker has stopped."""
        assert self._queue is not None
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def hexdigest(self) -> str:
        """The hex SHA-256 of the whole file, reading what was not offered in order."""
        if self._digest is not None:
            return self._digest
        if self._thread is None:
            with self._lock:
                while self._read_next():
                    pass
        else:
            assert self._queue is not None
            if self._thread.is_alive():
                self._queue.put(None)
            self._thread.join()
            if self._error is not None:
                raise self._error
        self._digest = self._hasher.hexdigest()
        return self._digest

    def close(self) -> None:
        """Stop the worker (an abandoned upload); the digest is not wanted any more."""
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._size = self._upto  # nothing left to read: the worker ends at the marker
            self._drain()
            self._queue.put(None)
            self._thread.join()
