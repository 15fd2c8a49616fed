"""Kept files (after_upload = "keep") rewritten in place after their upload (syncd/kept.py).

A producer that rewrites a kept file at the same size and sets its mtime back
(``cp --preserve=timestamps``, ``rsync -t --inplace``, ``touch -d``) keeps its
size, mtime and inode: scans and events took it for the version uploaded, and
the new bytes never left. The inode change time tells, and a re-hash decides:
a chmod, a chown or a rename changes it too but leaves the bytes, which are
not uploaded again. Real files, the real uploader with a fake destination.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import kept, scanner, writers
from syncd.config import FolderConfig
from syncd.ledger import Ledger, Row
from syncd.settle import Settler
from syncd.uploader import Uploader
from tests.conftest import FakeClock, make_folder, row_of
from tests.harness import rewrite_in_place
from tests.unit.test_uploader import FakeDestination


class Kept:
    """A keep folder, its ledger and an uploader; files go the whole way: scan, settle,
    upload, keep."""

    def __init__(self, tmp_path: Path, clock: FakeClock, **folder: Any) -> None:
        self.ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
        self.folder: FolderConfig = make_folder(
            tmp_path, after_upload="keep", archive_dir=None, settle_seconds=0, **folder
        )
        self.root = os.fspath(self.folder.path)
        self.dest = FakeDestination()
        self.up = Uploader(
            self.ledger,
            lambda: {"dest": self.dest},
            lambda: {self.root: self.folder},
            retry_base=1.0,
            retry_max=30.0,
            clock=clock,
            rng=random.Random(1),
        )
        self.rechecks: list[tuple[str, str]] = []
        self.settler = Settler(self.ledger, lambda: {self.root: self.folder}, clock=clock)
        self.settler.recheck = lambda root, rel: self.rechecks.append((root, rel))

    def path(self, rel: str) -> Path:
        return self.folder.path / rel

    def scan(self) -> int:
        return scanner.scan_folder(self.ledger, self.folder)

    def upload_waiting(self) -> list[Row]:
        """Settle what is settling (two looks: settle_seconds = 0) and upload what is queued."""
        self.settler.tick()
        self.settler.tick()
        done = []
        while (row := self.ledger.claim_next(["dest"])) is not None:
            assert self.up.process(row) in ("done", "skipped")
            done.append(row_of(self.ledger, row.id))
        return done

    def keep(self, rel: str, data: bytes) -> Row:
        """``rel`` written, found by a scan, settled, uploaded and kept."""
        self.path(rel).parent.mkdir(parents=True, exist_ok=True)
        self.path(rel).write_bytes(data)
        assert self.scan() == 1
        (row,) = self.upload_waiting()
        assert row.state == "done" and row.location is None
        return row

    def sent(self) -> list[bytes]:
        return [data for _, data in self.dest.received]


@pytest.fixture
def k(tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kept]:
    monkeypatch.setattr(writers, "_enabled", True)  # the settle stage's read lease, as in the daemon
    made = Kept(tmp_path, clock)
    yield made
    made.ledger.close()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths kept.py reads to hash them."""
    seen: list[str] = []
    real = kept._look

    def counted(ledger: Ledger, root: str, relpath: str, *args: Any) -> Any:
        seen.append(relpath)
        return real(ledger, root, relpath, *args)

    monkeypatch.setattr(kept, "_look", counted)
    return seen


def _same_version(path: Path, row: Row) -> bool:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (row.size, row.mtime_ns, row.inode)


def test_a_kept_file_rewritten_with_its_mtime_set_back_is_uploaded_again(k: Kept) -> None:
    first = k.keep("a.txt", b"AAAAAAAAAA")
    rewrite_in_place(k.path("a.txt"), b"BBBBBBBBBB")
    assert _same_version(k.path("a.txt"), first)  # what scans looked at: all as recorded
    assert k.scan() == 1  # the new bytes: a new version
    (second,) = k.upload_waiting()
    assert k.sent() == [b"AAAAAAAAAA", b"BBBBBBBBBB"]
    assert second.sha256 == hashlib.sha256(b"BBBBBBBBBB").hexdigest() and second.state == "done"
    assert row_of(k.ledger, first.id).last_error == kept.NOTE  # its bytes left the inbox
    assert k.scan() == 0 and k.upload_waiting() == []  # the new version is the kept one now


def test_a_kept_file_chmodded_renamed_or_relinked_is_hashed_once_and_not_uploaded_again(
    k: Kept, looks: list[str]
) -> None:
    row = k.keep("a.txt", b"the same bytes")
    assert k.scan() == 0 and looks == []  # untouched: not read again
    os.chmod(k.path("a.txt"), 0o640)
    os.link(k.path("a.txt"), k.path("../elsewhere"))
    assert k.scan() == 0 and looks == ["a.txt"]  # its inode changed: hashed, the same bytes
    assert row_of(k.ledger, row.id).ctime_ns == k.path("a.txt").stat().st_ctime_ns
    assert k.scan() == 0 and looks == ["a.txt"]  # recorded: not hashed again
    assert k.sent() == [b"the same bytes"] and len(k.ledger.rows()) == 1  # no upload, no new row
    assert row_of(k.ledger, row.id).last_error is None


def test_the_upload_leaves_a_kept_file_as_recorded_so_scans_never_read_it(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, looks: list[str]
) -> None:
    """syncd's own dealings with a kept file (the settle stage's read lease, the upload's
    reads, a duplicate's hash) must not change its ctime, or every scan would hash every
    kept file. A skipped duplicate is kept the same way."""
    monkeypatch.setattr(writers, "_enabled", True)
    k = Kept(tmp_path, clock, on_duplicate="skip")
    try:
        for rel in ("a.txt", "sub/b.txt"):
            k.path(rel).parent.mkdir(parents=True, exist_ok=True)
            k.path(rel).write_bytes(b"twice the same")
        assert k.scan() == 2
        rows = k.upload_waiting()
        assert sorted(r.state for r in rows) == ["done", "skipped"] and k.sent() == [b"twice the same"]
        for row in rows:
            assert row.ctime_ns == k.path(row.relpath).stat().st_ctime_ns
        assert k.scan() == 0 and looks == []
    finally:
        k.ledger.close()


def test_an_event_on_a_kept_file_hands_it_to_the_scanner_to_hash(k: Kept, looks: list[str]) -> None:
    """The settle stage (the main loop) reads no file: a kept file an event named, whose
    inode changed, is forgotten there and looked at by the scanner thread (a recheck)."""
    row = k.keep("a.txt", b"AAAAAAAAAA")
    os.chmod(k.path("a.txt"), 0o640)
    k.ledger.observe(k.root, ["a.txt"], destination="dest")  # the chmod's event
    k.settler.tick()
    assert k.rechecks == [(k.root, "a.txt")] and looks == [] and len(k.ledger.rows()) == 1
    assert kept.recheck(k.ledger, k.folder, "a.txt") == 0 and looks == ["a.txt"]
    assert row_of(k.ledger, row.id).ctime_ns == k.path("a.txt").stat().st_ctime_ns
    k.ledger.observe(k.root, ["a.txt"], destination="dest")  # another event, nothing changed
    k.settler.tick()
    assert k.rechecks == [(k.root, "a.txt")] and len(k.ledger.rows()) == 1  # known at once

    rewrite_in_place(k.path("a.txt"), b"BBBBBBBBBB")
    k.ledger.observe(k.root, ["a.txt"], destination="dest")
    k.settler.tick()
    assert k.rechecks[-1] == (k.root, "a.txt") and len(k.ledger.rows()) == 1
    assert kept.recheck(k.ledger, k.folder, "a.txt") == 1  # other bytes: a new version
    (second,) = k.upload_waiting()  # not taken for the kept one by the settle stage
    assert second.sha256 == hashlib.sha256(b"BBBBBBBBBB").hexdigest()
    assert k.sent() == [b"AAAAAAAAAA", b"BBBBBBBBBB"]


def test_a_kept_file_renamed_during_its_upload_is_known_under_its_new_name(k: Kept, looks: list[str]) -> None:
    """The row of a file renamed while it was sent is found by its location: an event on the
    new name, or a rewrite there, is judged against it like any kept file."""
    k.path("draft.txt").write_bytes(b"AAAAAAAAAA")
    assert k.scan() == 1
    k.settler.tick()
    k.settler.tick()
    k.dest.script.append(lambda source: os.rename(k.path("draft.txt"), k.path("final.txt")))
    row = k.ledger.claim_next(["dest"])
    assert row is not None and k.up.process(row) == "done"
    moved = row_of(k.ledger, row.id)
    assert moved.location == os.fspath(k.path("final.txt"))
    k.ledger.observe(k.root, ["final.txt"], destination="dest")  # the rename's event, late
    assert k.upload_waiting() == [] and k.rechecks == []
    rewrite_in_place(k.path("final.txt"), b"BBBBBBBBBB")
    assert k.scan() == 1 and looks == ["final.txt"]
    assert [r.sha256 for r in k.upload_waiting()] == [hashlib.sha256(b"BBBBBBBBBB").hexdigest()]


def _forget_ctime(ledger: Ledger, row_id: int, queued_at: float) -> None:
    """The row as a syncd before schema 9 left it: no ctime recorded."""
    with ledger._lock:
        ledger._conn.execute(
            "UPDATE files SET ctime_ns = NULL, queued_at = ? WHERE id = ?", (queued_at, row_id)
        )


def test_rows_from_before_ctimes_were_recorded(k: Kept, looks: list[str]) -> None:
    """After the upgrade to schema 9 the kept rows have no ctime. A file whose ctime is older
    than when it was queued has not changed since its upload: its ctime is recorded, unread.
    One changed since (a rewrite before the upgrade, which syncd missed) is hashed."""
    untouched = k.keep("a.txt", b"AAAAAAAAAA")
    rewritten = k.keep("b.txt", b"AAAAAAAAAA")
    # queued after it was last changed, as files are; b.txt's inode changed after (below)
    _forget_ctime(k.ledger, untouched.id, k.path("a.txt").stat().st_ctime_ns / 1e9 + 0.5)
    _forget_ctime(k.ledger, rewritten.id, k.path("b.txt").stat().st_ctime_ns / 1e9 - 1)
    rewrite_in_place(k.path("b.txt"), b"BBBBBBBBBB")
    assert k.scan() == 1 and looks == ["b.txt"]
    assert row_of(k.ledger, untouched.id).ctime_ns == k.path("a.txt").stat().st_ctime_ns
    assert [r.relpath for r in k.upload_waiting()] == ["b.txt"]
    assert k.scan() == 0 and looks == ["b.txt"]


def test_a_file_failed_in_place_is_tried_again_once_rewritten(
    k: Kept, looks: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed file that stays in the inbox (its move to failed_dir failed) has no
    uploaded bytes to compare with: a rewrite that keeps its size and mtime makes it a new
    version, tried again, without a hash; untouched, it stays failed."""
    from syncd import failed

    (tmp_path / "failed").write_bytes(b"not a directory")  # the move to failed_dir fails
    path = k.path("a.txt")
    path.write_bytes(b"AAAAAAAAAA")
    assert k.scan() == 1
    k.settler.tick()
    k.settler.tick()
    row = k.ledger.claim_next(["dest"])
    assert row is not None
    failed.to_failed(k.ledger, row, k.folder, "refused")
    row = row_of(k.ledger, row.id)
    assert row.state == "failed" and row.location is None and "stays in place" in caplog.text
    assert row.ctime_ns == path.stat().st_ctime_ns
    assert k.scan() == 0
    rewrite_in_place(path, b"BBBBBBBBBB")
    assert k.scan() == 1 and looks == []
    assert [r.sha256 for r in k.upload_waiting()] == [hashlib.sha256(b"BBBBBBBBBB").hexdigest()]


def test_a_scan_of_many_kept_files_reads_none_and_asks_the_ledger_a_few_questions(
    k: Kept, looks: list[str]
) -> None:
    """100,000 kept files must not cost a hash each, nor a query each, at every rescan."""
    for i in range(300):
        k.path(f"f{i:03d}.txt").write_bytes(b"kept %d" % i)
    assert k.scan() == 300
    assert len(k.upload_waiting()) == 300
    statements: list[str] = []
    k.ledger._conn.set_trace_callback(statements.append)
    try:
        assert k.scan() == 0
    finally:
        k.ledger._conn.set_trace_callback(None)
    assert looks == [] and len(statements) <= 4, statements  # active, any kept, the batch (2)
    for i in range(0, 300, 3):  # a third chmodded: hashed, their ctimes recorded in one go
        os.chmod(k.path(f"f{i:03d}.txt"), 0o640)
    statements.clear()
    k.ledger._conn.set_trace_callback(statements.append)
    try:
        assert k.scan() == 0
    finally:
        k.ledger._conn.set_trace_callback(None)
    assert len(looks) == 100 and len(k.ledger.rows()) == 300
    writes = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(writes) == 100 and sum(s.startswith("BEGIN") for s in statements) == 1, statements


def test_a_scan_holds_the_kept_versions_of_one_batch_of_paths_not_of_the_folder(
    k: Kept, looks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kept version of the folder was read into memory at each scan: 590 bytes a
    kept file, 59 MB at 100,000 and 590 MB at a million, at every rescan. The scan now asks
    for the paths it walked, a batch at a time."""
    from syncd.ledger import versions

    for i in range(25):
        k.path(f"f{i:03d}.txt").write_bytes(b"kept %d" % i)
    assert k.scan() == 25
    assert len(k.upload_waiting()) == 25
    monkeypatch.setattr(scanner, "LOOKUP", 10)
    asked: list[int] = []
    real = versions.Versions.kept_versions

    def spy(self: Ledger, folder: str, relpaths: list[str]) -> Any:
        asked.append(len(relpaths))
        return real(self, folder, relpaths)

    monkeypatch.setattr(versions.Versions, "kept_versions", spy)
    assert k.scan() == 0 and looks == []
    assert sorted(asked) == [5, 10, 10]


def test_a_kept_file_that_cannot_be_read_is_looked_at_again_later(
    k: Kept, looks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    row = k.keep("a.txt", b"AAAAAAAAAA")
    os.chmod(k.path("a.txt"), 0o640)
    real: Callable[..., int] = kept.safefs.open_file

    def denied(*args: Any, **kw: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kept.safefs, "open_file", denied)
    assert k.scan() == 0 and row_of(k.ledger, row.id).ctime_ns != k.path("a.txt").stat().st_ctime_ns
    monkeypatch.setattr(kept.safefs, "open_file", real)
    assert k.scan() == 0 and row_of(k.ledger, row.id).ctime_ns == k.path("a.txt").stat().st_ctime_ns
    assert looks == ["a.txt", "a.txt"] and k.sent() == [b"AAAAAAAAAA"]


def test_the_ledger_upgrade_adds_the_column_and_keeps_the_rows(tmp_path: Path) -> None:
    from tests.unit.test_ledger import _schema_2_ledger

    path = tmp_path / "old.sqlite3"
    _schema_2_ledger(path)
    ledger = Ledger.open(path)
    try:
        assert {r.state for r in ledger.rows()} == {"settling", "done", "failed"}
        assert all(r.ctime_ns is None for r in ledger.rows())
    finally:
        ledger.close()
    with sqlite3.connect(path) as conn:
        assert "ctime_ns" in [r[1] for r in conn.execute("PRAGMA table_info(files)")]
    conn.close()


def test_a_recheck_covers_no_scan_and_a_queued_scan_covers_a_recheck(tmp_path: Path) -> None:
    """A recheck names one file; a directory scan of the same name (the file replaced by a
    directory) is still queued. A whole-folder scan waiting already looks at the file."""
    from syncd.intake import RECHECK
    from tests.unit.test_settle_scan import _intake_stage

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    try:
        folder = make_folder(tmp_path, after_upload="keep", archive_dir=None)
        root = os.fspath(folder.path)
        settler = Settler(ledger, lambda: {root: folder})
        stage = _intake_stage(ledger, folder, settler)
        settler.recheck(root, "a.txt")  # the settle stage's ask reaches the scan queue
        stage.request_scan(root, "a.txt", reason=RECHECK)
        stage.request_scan(root, "a.txt", reason="directory")
        assert stage._queue.qsize() == 2
        stage.request_scan(root)
        stage.request_scan(root, "b.txt", reason=RECHECK)
        assert stage._queue.qsize() == 3
    finally:
        ledger.close()
