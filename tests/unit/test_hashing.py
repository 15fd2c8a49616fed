"""syncd.hashing.StreamHash: the SHA-256 beside the upload, in any read order."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from syncd.errors import SourceChangedError
from syncd.hashing import BACKGROUND_FROM, BLOCK, StreamHash


def _file(tmp_path: Path, size: int) -> tuple[int, bytes]:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY), data


@pytest.mark.parametrize("size", [0, 1, BLOCK + 3, BACKGROUND_FROM + BLOCK // 2, 9 * BLOCK])
def test_in_order_reads(tmp_path: Path, size: int) -> None:
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    for pos in range(0, size, BLOCK):
        h.offer(pos, data[pos : pos + BLOCK])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()  # cached
    os.close(fd)


@pytest.mark.parametrize("size", [BLOCK * 2 + 5, BACKGROUND_FROM * 3])
def test_parallel_parts_out_of_order_and_resent(tmp_path: Path, size: int) -> None:
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    part = 2 * BLOCK
    starts = list(range(0, size, part))

    def send(start: int) -> None:
        for pos in range(start, min(start + part, size), BLOCK):
            h.offer(pos, data[pos : min(pos + BLOCK, start + part, size)])

    threads = [threading.Thread(target=send, args=(s,)) for s in reversed(starts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send(starts[0])  # a part sent again after a failure
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    os.close(fd)


def test_nothing_offered_reads_the_file(tmp_path: Path) -> None:
    fd, data = _file(tmp_path, BACKGROUND_FROM + 7)
    assert StreamHash(fd, len(data)).hexdigest() == hashlib.sha256(data).hexdigest()
    os.close(fd)


@pytest.mark.parametrize("size", [BLOCK * 2, BACKGROUND_FROM * 2])
def test_truncated_file_is_a_change(tmp_path: Path, size: int) -> None:
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    h.offer(0, data[:BLOCK])
    os.truncate(tmp_path / "f", BLOCK + 10)
    with pytest.raises(SourceChangedError, match="truncated"):
        h.hexdigest()
    os.close(fd)


def test_close_stops_the_worker(tmp_path: Path) -> None:
    fd, data = _file(tmp_path, BACKGROUND_FROM * 4)
    h = StreamHash(fd, len(data))
    h.offer(0, data[:BLOCK])
    h.offer(3 * BLOCK, data[3 * BLOCK : 4 * BLOCK])  # out of order: catch-up mode
    worker = h._thread
    assert worker is not None and worker.is_alive()
    h.close()
    assert not worker.is_alive()
    os.close(fd)


def test_a_rewrite_with_its_mtime_set_back_is_caught_when_parts_went_out_of_order(tmp_path: Path) -> None:
    """Parts sent out of order (parallel_parts, or confirmed by an earlier attempt): the
    hash reads what it was not offered from the file, later. A rewrite of a part already
    sent, its mtime set back, was then in both the hash and the re-hash that should catch
    it, and the upload was kept while the service held the old bytes."""
    from syncd.destinations.base import Source

    size = 6 * BLOCK
    path = tmp_path / "f"
    data = random.Random(7).randbytes(size)
    path.write_bytes(data)
    st = path.stat()
    with Source(path, size=size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        for _ in source.iter_range(3 * BLOCK, 3 * BLOCK):  # the second part first
            pass
        for _ in source.iter_range(0, BLOCK):  # and only a block of the first
            pass
        with open(path, "r+b") as f:  # a block never offered in order, rewritten
            f.seek(2 * BLOCK)
            f.write(b"X" * BLOCK)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(SourceChangedError, match="not trusted"):
            source.check_unchanged()


def test_parts_sent_in_parallel_are_hashed_from_what_was_sent(tmp_path: Path) -> None:
    """Later parts offered before the first are held until the hash reaches them: the
    file is read once, for the wire, and the hash is of the bytes sent (not of a second
    read that would agree with a file rewritten since)."""
    size = 12 * BLOCK
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    part = 4 * BLOCK
    for start in (8 * BLOCK, 4 * BLOCK, 0):  # the last part first, the first last
        for pos in range(start, start + part, BLOCK):
            h.offer(pos, data[pos : pos + BLOCK])
    (tmp_path / "f").write_bytes(b"X" * size)  # a later read would see other bytes
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert not h.read_itself
    os.close(fd)


def test_more_ahead_than_can_be_held_is_read_from_the_file(tmp_path: Path) -> None:
    from syncd.hashing import HELD_BYTES

    size = HELD_BYTES + 4 * BLOCK
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    for pos in range(BLOCK, size, BLOCK):  # everything but the first block, ahead of the hash
        h.offer(pos, data[pos : pos + BLOCK])
    assert h._held_bytes <= HELD_BYTES
    h.offer(0, data[:BLOCK])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.read_itself  # what could not be held was read again
    assert not h._held
    os.close(fd)


def test_a_resumed_first_part_is_read_while_the_others_go(tmp_path: Path) -> None:
    """The first part was confirmed before a restart, so it is never offered: the worker
    reads it from the file while the later parts are sent, instead of waiting (it slept
    on the empty queue with no timeout) and reading all of it at the end."""
    size = 12 * BLOCK
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    for pos in range(4 * BLOCK, size, BLOCK):  # parts 2 and 3; part 1 was resumed
        h.offer(pos, data[pos : pos + BLOCK])
    deadline = time.monotonic() + 10
    while h._upto < size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h._upto == size  # all hashed before anyone asked for the digest
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() and h.read_itself
    os.close(fd)


def test_close_while_an_offer_waits_for_room_lets_it_go(tmp_path: Path) -> None:
    """An upload abandoned while a reader waits to queue a block and the held blocks it
    joins up to: close() stopped the worker, and the reader waited for room for good."""
    from syncd.hashing import QUEUED_BLOCKS

    size = (QUEUED_BLOCKS + 20) * BLOCK
    fd, data = _file(tmp_path, size)
    h = StreamHash(fd, size)
    gate = threading.Event()
    real = h._update

    def slow(block: bytes) -> None:
        gate.wait(10)
        real(block)

    h._update = slow  # type: ignore[method-assign]
    for pos in range(BLOCK, size, BLOCK):  # held, ahead of block 0
        h.offer(pos, data[pos : pos + BLOCK])
    first = threading.Thread(target=h.offer, args=(0, data[:BLOCK]))
    first.start()  # queues block 0, then the held ones, until the queue is full
    time.sleep(0.3)
    closer = threading.Thread(target=h.close)
    closer.start()
    gate.set()
    first.join(10)
    closer.join(10)
    assert not first.is_alive() and not closer.is_alive()
    os.close(fd)
