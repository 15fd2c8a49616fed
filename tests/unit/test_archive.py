from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import archive, copies, earlier, failed, moves, writers
from syncd import names as free
from syncd.config import FolderConfig
from syncd.ledger import Ledger, Row
from tests.conftest import FakeClock, make_folder, queue_file, row_of


def _uploaded(ledger: Ledger, folder: object, rel: str, data: bytes = b"hello") -> Row:
    row = ledger.get(queue_file(ledger, folder, rel, data))
    assert row is not None
    ledger.claim_next()
    ledger.mark_uploaded(row.id, sha256=hashlib.sha256(data).hexdigest(), receipt={"remote_id": "r"})
    got = ledger.get(row.id)
    assert got is not None
    return got


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def test_archive_keeps_sub_path(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "sub/dir/a.txt")
    archive.finish(ledger, row, folder)
    target = tmp_path / "archive" / "inbox" / "sub" / "dir" / "a.txt"
    assert target.read_bytes() == b"hello"
    assert not (tmp_path / "inbox" / "sub" / "dir" / "a.txt").exists()
    done = ledger.get(row.id)
    assert done is not None and done.state == "done" and done.location == str(target)


def test_archive_never_overwrites(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    existing = tmp_path / "archive" / "inbox" / "a.txt"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"older")
    (existing.parent / "a (1).txt").write_bytes(b"older too")
    row = _uploaded(ledger, folder, "a.txt", b"new")
    archive.finish(ledger, row, folder)
    assert existing.read_bytes() == b"older"
    assert (existing.parent / "a (1).txt").read_bytes() == b"older too"
    assert (existing.parent / "a (2).txt").read_bytes() == b"new"


def test_collision_suffix_stays_within_name_max() -> None:
    name = "x" * 251 + ".pdf"
    names = free.candidate_names(name)
    assert next(names) == name
    second = next(names)
    assert len(os.fsencode(second)) <= 255 and second.endswith(" (1).pdf")
    multi = "é" * 125 + ".txt"  # 250 + 4 bytes
    suffixed = [next(free.candidate_names(multi)) for _ in range(1)]
    gen = free.candidate_names(multi)
    next(gen)
    s = next(gen)
    assert len(os.fsencode(s)) <= 255
    s.encode("utf-8")  # still valid UTF-8: no character cut in half
    assert suffixed


def test_cross_device_archive(tmp_path: Path, ledger: Ledger) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        folder = make_folder(tmp_path, archive_dir=Path(other) / "arch")
        row = _uploaded(ledger, folder, "a.txt", b"x" * 100_000)
        archive.finish(ledger, row, folder)
        target = Path(other) / "arch" / "a.txt"
        assert target.read_bytes() == b"x" * 100_000
        assert not (tmp_path / "inbox" / "a.txt").exists()
        assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temp left


class _SetAfter(threading.Event):
    """An event that reads as set from its ``n``-th look on (a stop during a copy)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.looks, self.n = 0, n

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.n


def test_a_stop_cuts_a_cross_device_copy_short_and_the_next_start_finishes_it(
    tmp_path: Path, ledger: Ledger
) -> None:
    """A stop during a copy into an archive on another file system: the copy stops at
    its next block and removes its temp file; the file stays in the inbox, uploaded,
    and the next try archives it whole."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    import tempfile

    data = os.urandom(3 * copies.COPY_BLOCK + 5)
    with tempfile.TemporaryDirectory(dir=shm) as other:
        folder = make_folder(tmp_path, archive_dir=Path(other) / "arch")
        row = _uploaded(ledger, folder, "big.bin", data)
        stop = _SetAfter(2)  # after the first block
        with pytest.raises(OSError) as raised:
            archive.finish(ledger, row, folder, cancel=stop)
        assert raised.value.errno == errno.ECANCELED and stop.looks == 2
        arch = Path(other) / "arch"
        assert [p.name for p in arch.iterdir()] == []  # neither the name nor a temp copy
        assert (tmp_path / "inbox" / "big.bin").read_bytes() == data
        assert row_of(ledger, row.id).state == "uploaded"
        archive.finish(ledger, row_of(ledger, row.id), folder)  # the next start
        assert (arch / "big.bin").read_bytes() == data
        assert not (tmp_path / "inbox" / "big.bin").exists()


def test_crash_after_link_before_unlink_is_finished_once(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt")
    target = tmp_path / "archive" / "inbox" / "a.txt"
    target.parent.mkdir(parents=True)
    ledger.set_archive_target(row.id, str(target))
    os.link(tmp_path / "inbox" / "a.txt", target)  # the crash happened right here
    again = ledger.get(row.id)
    assert again is not None
    archive.finish(ledger, again, folder)
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    assert not (tmp_path / "inbox" / "a.txt").exists()
    assert row_of(ledger, row.id).state == "done"


def test_crash_after_cross_device_copy_is_finished_once(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    target = tmp_path / "archive" / "inbox" / "a.txt"
    target.parent.mkdir(parents=True)
    ledger.set_archive_target(row.id, str(target))
    target.write_bytes(b"payload")  # a full copy (different inode) made before the crash
    archive.finish(ledger, row_of(ledger, row.id), folder)
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    assert not (tmp_path / "inbox" / "a.txt").exists()


def test_planned_target_taken_by_another_file(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"mine")
    target = tmp_path / "archive" / "inbox" / "a.txt"
    target.parent.mkdir(parents=True)
    ledger.set_archive_target(row.id, str(target))
    target.write_bytes(b"someone else's")
    archive.finish(ledger, row_of(ledger, row.id), folder)
    assert target.read_bytes() == b"someone else's"
    assert (target.parent / "a (1).txt").read_bytes() == b"mine"


def test_delete_and_keep(tmp_path: Path, ledger: Ledger) -> None:
    deleting = make_folder(tmp_path, "del", after_upload="delete")
    row = _uploaded(ledger, deleting, "a.txt")
    archive.finish(ledger, row, deleting)
    assert not (tmp_path / "del" / "a.txt").exists()
    keeping = make_folder(tmp_path, "keep", after_upload="keep")
    row = _uploaded(ledger, keeping, "a.txt")
    archive.finish(ledger, row, keeping)
    assert (tmp_path / "keep" / "a.txt").exists()
    assert row_of(ledger, row.id).state == "done"


def test_source_vanished_after_upload(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt")
    (tmp_path / "inbox" / "a.txt").unlink()
    archive.finish(ledger, row, folder)
    done = ledger.get(row.id)
    assert done is not None and done.state == "done" and "vanished" in (done.last_error or "")


def test_to_failed_moves_with_sidecar(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "sub/a.txt")
    failed.to_failed(ledger, row, folder, "HTTP 400: bad file")
    moved = tmp_path / "failed" / "inbox" / "sub" / "a.txt"
    assert moved.read_bytes() == b"hello"
    sidecar = json.loads((moved.parent / "a.txt.error.json").read_text())
    assert sidecar["reason"] == "HTTP 400: bad file" and sidecar["ledger_id"] == row.id
    gave_up = ledger.get(row.id)
    assert gave_up is not None and gave_up.state == "failed" and gave_up.location == str(moved)


def test_clean_temp(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{copies.TEMP_PREFIX}abc").write_bytes(b"half")
    (tmp_path / "d" / "keep.txt").write_bytes(b"k")
    assert copies.clean_temp(str(tmp_path)) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]


def test_a_new_file_under_the_same_name_is_never_archived_as_uploaded(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"uploaded version")
    path = tmp_path / "inbox" / "a.txt"
    path.unlink()
    path.write_bytes(b"a newer file, never uploaded")  # new inode, same name
    archive.finish(ledger, row, folder)
    assert path.read_bytes() == b"a newer file, never uploaded"
    assert not (tmp_path / "archive" / "inbox" / "a.txt").exists()
    done = ledger.get(row.id)
    assert done is not None and done.state == "done" and "replaced" in (done.last_error or "")
    new = ledger.active_for_path(str(tmp_path / "inbox"), "a.txt")
    assert new is not None and new.state == "settling"


def test_a_new_file_under_the_same_name_settles_when_syncd_is_out_of_descriptors_to_look(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at whether a new file holds the uploaded file's name needs a descriptor.
    Out of them (EMFILE), it was taken for "nothing there": the new file got no row, and
    waited for the periodic rescan (an hour, by default). Now the name is put to settle
    all the same; the settle stage looks at it."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"uploaded version")
    path = tmp_path / "inbox" / "a.txt"
    path.unlink()
    path.write_bytes(b"a newer file, never uploaded")
    looked: list[str] = []

    def short(root: object, rel: str) -> os.stat_result:
        looked.append(rel)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(archive.safefs, "lstat", short)
    archive.finish(ledger, row, folder)
    assert looked == ["a.txt"]
    assert row_of(ledger, row.id).state == "done" and path.read_bytes() == b"a newer file, never uploaded"
    new = ledger.active_for_path(str(tmp_path / "inbox"), "a.txt")
    assert new is not None and new.state == "settling"


def _uploaded_with_target(ledger: Ledger, folder: FolderConfig, rel: str, data: bytes) -> Row:
    """What the upload procedure does: the natural target recorded with "uploaded"."""
    row = ledger.get(queue_file(ledger, folder, rel, data))
    assert row is not None
    ledger.claim_next()
    target = archive.natural_target(row, folder)
    ledger.mark_uploaded(
        row.id, sha256=hashlib.sha256(data).hexdigest(), receipt={"remote_id": "r"}, archive_target=target
    )
    got = ledger.get(row.id)
    assert got is not None and got.archive_path == target
    return got


def test_target_recorded_with_the_upload_costs_no_commit_of_its_own(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded_with_target(ledger, folder, "sub/a.txt", b"fresh")
    assert row.archive_path == str(tmp_path / "archive" / "inbox" / "sub" / "a.txt")
    recorded: list[str | None] = []
    monkeypatch.setattr(ledger, "set_archive_target", lambda _id, t: recorded.append(t))
    archive.finish(ledger, row, folder, fresh=True)
    assert recorded == []  # the upload's commit holds the target; the move only syncs it
    assert Path(row.archive_path).read_bytes() == b"fresh"
    done = ledger.get(row.id)
    assert done is not None and done.state == "done" and done.location == row.archive_path


def test_taken_name_is_not_recorded_with_the_upload(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    existing = tmp_path / "archive" / "inbox" / "a.txt"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"fresh")  # the same bytes, archived before under the same name
    row = _uploaded_with_target(ledger, folder, "a.txt", b"fresh")
    assert row.archive_path is None
    archive.finish(ledger, row, folder, fresh=True)
    assert existing.read_bytes() == b"fresh"
    assert (existing.parent / "a (1).txt").read_bytes() == b"fresh"  # its own copy, as before
    done = ledger.get(row.id)
    assert done is not None and done.location == str(existing.parent / "a (1).txt")


def test_fresh_target_taken_between_upload_and_move_gets_a_suffix(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded_with_target(ledger, folder, "a.txt", b"fresh")
    assert row.archive_path is not None
    Path(row.archive_path).parent.mkdir(parents=True, exist_ok=True)
    Path(row.archive_path).write_bytes(b"fresh")  # an identical file lands there meanwhile
    archive.finish(ledger, row, folder, fresh=True)
    assert Path(row.archive_path).read_bytes() == b"fresh"
    suffixed = Path(row.archive_path).with_name("a (1).txt")
    assert suffixed.read_bytes() == b"fresh"
    done = ledger.get(row.id)
    assert done is not None and done.location == str(suffixed) and done.archive_path == str(suffixed)


def test_natural_target_only_for_archive_folders(tmp_path: Path, ledger: Ledger) -> None:
    row = ledger.get(queue_file(ledger, make_folder(tmp_path), "a.txt", b"x"))
    assert row is not None
    for mode in ("keep", "delete"):
        folder = make_folder(tmp_path, after_upload=mode)
        assert archive.natural_target(row, folder) is None


def test_the_next_free_number_is_found_with_few_lookups() -> None:
    """export.csv and export (1..N).csv exist: the next name is export (N+1).csv, found
    with about 2 log2(N) lookups (one per number took a second and a half a file at
    N = 500,000)."""
    for n in (0, 1, 2, 7, 5000, 500_000):
        existing = {"export.csv", *(f"export ({i}).csv" for i in range(1, n + 1))}
        looked: list[str] = []

        def taken(name: str, existing: set[str] = existing, looked: list[str] = looked) -> bool:
            looked.append(name)
            return name in existing

        first = next(free.free_names("export.csv", taken))
        assert first == f"export ({n + 1}).csv"
        assert len(looked) <= 2 * max(n, 1).bit_length() + 2, (n, len(looked))


def test_free_names_fill_a_gap_or_go_on_but_never_name_a_taken_file() -> None:
    existing = {"a.txt", *(f"a ({i}).txt" for i in range(1, 100) if i != 37)}
    names = free.free_names("a.txt", lambda name: name in existing)
    got = [next(names) for _ in range(3)]
    assert not set(got) & existing and len(set(got)) == 3
    assert next(free.free_names("b.txt", lambda name: False)) == "b.txt"


def test_archiving_the_same_name_again_and_again(tmp_path: Path, ledger: Ledger) -> None:
    """A producer that always writes export.csv: each one is archived under the next number."""
    folder = make_folder(tmp_path)
    target = Path(folder.archive_dir or "")
    target.mkdir(parents=True, exist_ok=True)
    (target / "export.csv").write_bytes(b"0")
    for i in range(1, 301):
        (target / f"export ({i}).csv").write_bytes(b"old")
    row = _uploaded(ledger, folder, "export.csv", b"new")
    archive.finish(ledger, row, folder)
    assert (target / "export (301).csv").read_bytes() == b"new"


def _rewrite(path: Path, data: bytes) -> None:
    """A producer writes the file again in place (same size), a second later."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("how", ["copied", "linked"])
def test_a_file_written_to_while_it_is_archived_is_not_removed(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The producer rewrites the file in place while it is being archived (a copy of
    many gigabytes takes minutes). The copy's hash only covers what it read, so the
    inbox file, with bytes never uploaded, was removed: the new version was nowhere.
    Now nothing is archived, the inbox file stays, and it is a new version to upload."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.bin", b"old" * 1000)
    inbox_file = tmp_path / "inbox" / "a.bin"
    if how == "copied":  # a second hard link: the archive gets a copy, as across file systems
        os.link(inbox_file, tmp_path / "second-link")
    real_place = moves._place

    def place_then_written(
        src: moves.Held, dirfd: int, name: str, sha256: str | None, *args: Any, **kw: Any
    ) -> None:
        real_place(src, dirfd, name, sha256, *args, **kw)
        _rewrite(inbox_file, b"NEW")

    monkeypatch.setattr(moves, "_place", place_then_written)
    archive.finish(ledger, row, folder)
    assert inbox_file.read_bytes() == b"NEW" + b"old" * 999
    assert not (tmp_path / "archive" / "inbox" / "a.bin").exists()
    done = row_of(ledger, row.id)
    assert done.state == "done" and "written to since it was uploaded" in (done.last_error or done.note or "")
    again = ledger.active_for_path(os.fspath(tmp_path / "inbox"), "a.bin")
    assert again is not None and again.state == "settling"


def test_a_file_written_to_just_before_its_delete_is_not_deleted(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path, "del", after_upload="delete")
    row = _uploaded(ledger, folder, "a.bin", b"old" * 10)
    inbox_file = tmp_path / "del" / "a.bin"
    real_sync = ledger.sync

    def sync_then_written() -> None:
        real_sync()
        _rewrite(inbox_file, b"NEW")

    monkeypatch.setattr(ledger, "sync", sync_then_written)
    archive.finish(ledger, row, folder)
    assert inbox_file.read_bytes() == b"NEW" + b"old" * 9
    assert ledger.active_for_path(os.fspath(tmp_path / "del"), "a.bin") is not None


def test_a_copy_larger_than_the_free_space_is_not_begun(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive with less room than the file: each pass of the disk-full probe copied it
    from byte 0 until ENOSPC (gigabytes written, the archive disk full for its other users
    again and again). Now the copy is refused at once, saying how much it needs."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "big.bin", b"x" * 100_000)
    os.link(tmp_path / "inbox" / "big.bin", tmp_path / "second-link")  # a copy, not a link
    real = os.fstatvfs

    def small(fd: int) -> os.statvfs_result:
        got = real(fd)
        return os.statvfs_result((got.f_bsize, 1000, got.f_blocks, 10, 10, *tuple(got)[5:]))

    monkeypatch.setattr(os, "fstatvfs", small)
    with pytest.raises(OSError, match="a copy of 100,000 bytes, 10,000 bytes free") as caught:
        archive.finish(ledger, row, folder)
    assert caught.value.errno == errno.ENOSPC
    assert (tmp_path / "inbox" / "big.bin").exists()
    assert not list((tmp_path / "archive" / "inbox").iterdir())


# -- the archive is syncd's alone: no descriptor a producer keeps reaches it ---------------------


@pytest.fixture
def leases(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernel's leases asked, as in the daemon (SIGIO ignored)."""
    before = signal.getsignal(signal.SIGIO)
    writers.enable()
    yield
    monkeypatch.setattr(writers, "_enabled", False)
    signal.signal(signal.SIGIO, before)


def _ino(path: Path) -> int:
    return path.stat().st_ino


def test_a_file_of_syncds_own_user_is_linked(tmp_path: Path, ledger: Ledger, leases: None) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"alone")
    (tmp_path / "inbox" / "a.txt").chmod(0o644)  # whatever the umask: no one else may write it
    inode = _ino(tmp_path / "inbox" / "a.txt")
    archive.finish(ledger, row, folder)
    assert _ino(tmp_path / "archive" / "inbox" / "a.txt") == inode  # no copy needed


@pytest.mark.parametrize("how", ["another user's", "writable by others"])
def test_a_descriptor_the_producer_keeps_does_not_reach_the_archive(
    tmp_path: Path, ledger: Ledger, leases: None, how: str
) -> None:
    """A producer that reopened its file during the upload (no write yet: size, mtime and
    ctime unchanged) kept a descriptor to the inode; as its owner it may also reopen a
    read-only or O_PATH one for writing through /proc. Such an inode is never linked
    into the archive: it gets a private copy, so what the producer writes later lands
    in the inbox's old inode, not in the archive."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"amount: 100 EUR\n")
    inbox_file = tmp_path / "inbox" / "a.txt"
    if how == "another user's":
        os.chown(inbox_file, 65534, 65534)
    else:
        inbox_file.chmod(0o666)
    kept = os.open(inbox_file, os.O_PATH)
    try:
        archive.finish(ledger, row_of(ledger, row.id), folder)
        archived = tmp_path / "archive" / "inbox" / "a.txt"
        assert archived.read_bytes() == b"amount: 100 EUR\n"
        assert _ino(archived) != os.fstat(kept).st_ino and archived.stat().st_uid == os.geteuid()
        with open(f"/proc/self/fd/{kept}", "r+b") as producer:
            producer.write(b"amount: 999 EUR\n")
        assert archived.read_bytes() == b"amount: 100 EUR\n"
    finally:
        os.close(kept)
    assert sorted(p.name for p in archived.parent.iterdir()) == ["a.txt"]  # no temp left


@pytest.mark.parametrize("after", ["archive", "delete"])
def test_a_file_still_open_for_writing_waits_until_it_is_closed(
    tmp_path: Path, ledger: Ledger, leases: None, after: str
) -> None:
    folder = make_folder(tmp_path, after_upload=after)
    row = _uploaded(ledger, folder, "a.txt", b"written")
    writer = os.open(tmp_path / "inbox" / "a.txt", os.O_WRONLY)
    try:
        with pytest.raises(moves.StillOpen):
            archive.finish(ledger, row, folder)
        assert (tmp_path / "inbox" / "a.txt").read_bytes() == b"written"
        assert row_of(ledger, row.id).state == "uploaded"
    finally:
        os.close(writer)
    archive.finish(ledger, row_of(ledger, row.id), folder)  # closed: it goes
    assert not (tmp_path / "inbox" / "a.txt").exists()
    assert row_of(ledger, row.id).state == "done"


@pytest.mark.parametrize("after", ["archive", "delete"])
def test_after_a_restart_bytes_rewritten_with_the_old_mtime_are_not_archived_or_deleted(
    tmp_path: Path, ledger: Ledger, after: str
) -> None:
    """A crash after the "uploaded" commit; the producer then rewrote the file in place
    at the same size and set its mtime back. After the restart (no upload descriptor)
    the bytes are hashed again: not those uploaded, so a new version, left in the inbox."""
    folder = make_folder(tmp_path, after_upload=after)
    row = _uploaded(ledger, folder, "a.txt", b"amount: 100 EUR\n")
    inbox_file = tmp_path / "inbox" / "a.txt"
    st = inbox_file.stat()
    inbox_file.write_bytes(b"amount: 999 EUR\n")
    os.utime(inbox_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    archive.finish(ledger, row_of(ledger, row.id), folder)
    assert inbox_file.read_bytes() == b"amount: 999 EUR\n"
    assert not (tmp_path / "archive" / "inbox" / "a.txt").exists()
    assert "changed after upload" in (row_of(ledger, row.id).last_error or row_of(ledger, row.id).note or "")
    fresh = ledger.active_for_path(os.fspath(folder.path), "a.txt")
    assert fresh is not None and fresh.id != row.id  # the new version settles on its own


def test_a_name_past_255_bytes_is_never_tried_and_a_suffix_stays_whole() -> None:
    """``NAME (1).bin`` + ``.meta.json`` is 259 bytes for a 245-byte NAME: looking it up
    raised ENAMETOOLONG, and the sidecar's row stayed uploaded for ever."""
    long = "n" * 249 + ".meta.json"  # 259 bytes
    looked: list[str] = []
    got = next(free.free_names(long, lambda n: looked.append(n) or False))
    assert long not in looked and len(got.encode()) <= 255
    fitted = free.with_suffix("é" * 125 + " (1).bin", ".meta.json")  # 2-byte characters
    assert fitted.endswith(".meta.json") and len(fitted.encode()) <= 255
    assert fitted.encode().decode() == fitted  # not cut inside a character
    assert free.with_suffix("a.bin", ".meta.json") == "a.bin.meta.json"


def test_an_earlier_moves_entry_holds_the_upload_only_with_its_bytes(tmp_path: Path) -> None:
    """A move past the inbox unlink is done only if its entry holds the bytes uploaded:
    a file of another size or other bytes under that name is not the row's."""
    root = tmp_path / "archive"
    root.mkdir()
    entry = root / "a.txt"
    entry.write_bytes(b"uploaded")
    digest = hashlib.sha256(b"uploaded").hexdigest()
    assert earlier.holds_uploaded(str(entry), str(root), 8, digest)
    assert not earlier.holds_uploaded(str(entry), str(root), 9, digest)
    entry.write_bytes(b"UPLOADED")
    assert not earlier.holds_uploaded(str(entry), str(root), 8, digest)
    assert not earlier.holds_uploaded(str(root / "gone.txt"), str(root), 8, digest)
    os.symlink(entry, root / "link.txt")
    assert not earlier.holds_uploaded(
        str(root / "link.txt"), str(root), 8, hashlib.sha256(b"UPLOADED").hexdigest()
    )


def test_an_archive_entry_is_not_taken_for_none_when_syncd_cannot_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exists_under decides where an interrupted archive move is finished and where a
    sidecar goes: out of file descriptors to look is no answer, not "nothing there"."""
    import errno

    (tmp_path / "a.txt").write_bytes(b"x")
    assert archive.exists_under(str(tmp_path / "a.txt"), str(tmp_path))

    def short(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(archive.safefs, "lstat", short)
    with pytest.raises(OSError):
        archive.exists_under(str(tmp_path / "a.txt"), str(tmp_path))
