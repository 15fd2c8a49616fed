"""After a restart, an uploaded file gone from its path is looked for by its inode: a
different file that got the same (reused) inode number is not the uploaded one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import archive
from syncd.ledger import Ledger, Row
from tests.conftest import FakeClock, make_folder, note_stat, row_of
from tests.unit.test_archive import _uploaded


def _renamed_with_a_scanned_row(ledger: Ledger, inbox: Path) -> Row:
    """a.txt renamed to b.txt while syncd was down, and the start-up scan's settling row
    for b.txt (with the file's stat, as the settle stage records it)."""
    os.rename(inbox / "a.txt", inbox / "b.txt")
    st = (inbox / "b.txt").stat()
    ledger.observe(os.fspath(inbox), ["b.txt"], destination="dest")
    twin = ledger.active_for_path(os.fspath(inbox), "b.txt")
    assert twin is not None
    note_stat(ledger, twin.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)
    return twin


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


@pytest.mark.parametrize("after_upload", ["archive", "delete"])
def test_a_new_file_with_a_reused_inode_is_not_taken_for_the_uploaded_one(
    tmp_path: Path, ledger: Ledger, after_upload: str
) -> None:
    folder = make_folder(tmp_path, after_upload=after_upload)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    inbox = tmp_path / "inbox"
    (inbox / "a.txt").unlink()  # deleted while syncd was down
    (inbox / "c.txt").write_bytes(b"another file, never uploaded")
    st = (inbox / "c.txt").stat()
    # the file system gave the new file the freed inode number (ext4, tmpfs do)
    with ledger._lock, ledger._conn:
        ledger._conn.execute(
            "UPDATE files SET inode = ?, device = ? WHERE id = ?", (st.st_ino, st.st_dev, row.id)
        )
    row = row_of(ledger, row.id)
    # the start-up scan's row for the new file
    ledger.observe(os.fspath(inbox), ["c.txt"], destination="dest")
    twin = ledger.active_for_path(os.fspath(inbox), "c.txt")
    assert twin is not None
    note_stat(ledger, twin.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)
    archive.finish(ledger, row, folder)
    assert (inbox / "c.txt").read_bytes() == b"another file, never uploaded"
    # the new file keeps a row of its own, to be uploaded
    assert ledger.active_for_path(os.fspath(inbox), "c.txt") is not None
    assert row_of(ledger, row.id).location is None


def test_kept_file_renamed_during_its_upload_then_a_crash_is_not_uploaded_again(
    tmp_path: Path, ledger: Ledger
) -> None:
    """after_upload = "keep": renamed a.txt -> b.txt while it was sent, killed before the
    new path was recorded. The start-up scan's row for b.txt is the same bytes: it is not
    uploaded a second time (F3: "rescans and restarts know it as the version uploaded")."""
    folder = make_folder(tmp_path, after_upload="keep", archive_dir=None)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    inbox = tmp_path / "inbox"
    _renamed_with_a_scanned_row(ledger, inbox)
    archive.finish(ledger, row, folder)
    assert (inbox / "b.txt").read_bytes() == b"payload"  # kept
    done = row_of(ledger, row.id)
    assert done.state == "done" and done.location == str(inbox / "b.txt")
    assert ledger.active_for_path(os.fspath(inbox), "b.txt") is None  # not sent again


def test_a_second_name_the_file_had_before_it_was_queued_is_not_taken_for_a_rename(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """after_upload = "delete", a.txt and b.txt two names (hard links) of one file, each
    with its row; killed after a.txt was deleted, before that was recorded. b.txt is not
    a.txt renamed (its row is older than a.txt's upload): it is not deleted unsent."""
    folder = make_folder(tmp_path, after_upload="delete", archive_dir=None)
    inbox = tmp_path / "inbox"
    (inbox / "a.txt").write_bytes(b"payload")
    os.link(inbox / "a.txt", inbox / "b.txt")
    ledger.observe(os.fspath(inbox), ["b.txt"], destination="dest")  # waits behind a.txt
    second = ledger.active_for_path(os.fspath(inbox), "b.txt")
    st = (inbox / "b.txt").stat()
    assert second is not None
    note_stat(ledger, second.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)
    clock.advance(5)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    (inbox / "a.txt").unlink()  # the delete, then the kill
    archive.finish(ledger, row, folder)
    assert (inbox / "b.txt").read_bytes() == b"payload"
    assert ledger.active_for_path(os.fspath(inbox), "b.txt") is not None


def test_the_walk_for_a_renamed_file_gives_up_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The walk runs on a worker or the archiver: over a folder of millions of files on a
    slow share it could outlast the watchdog's bound for them and get syncd restarted, to
    walk again. It gives up (the file counts as gone) after WALK_SECONDS."""
    from syncd import upload_source

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(600):
        (inbox / f"f{i:03d}.txt").write_bytes(b"x")
    renamed = inbox / "f599.txt"
    st = renamed.stat()
    version = (st.st_size, st.st_mtime_ns)
    root, old = os.fspath(inbox), os.fspath(inbox / "gone.txt")
    assert upload_source.find_inode(root, st.st_ino, st.st_dev, old, version) == os.fspath(renamed)
    monkeypatch.setattr(upload_source, "WALK_SECONDS", -1.0)
    assert upload_source.find_inode(root, st.st_ino, st.st_dev, old, version) is None
    assert "gave up looking for a renamed file" in caplog.text


def test_the_queued_row_of_the_new_name_is_retired_with_the_move(tmp_path: Path, ledger: Ledger) -> None:
    """Renamed a.txt -> b.txt during its upload, killed before the new path was recorded;
    the start-up scan's row for b.txt was quiet long enough to be queued before the
    recovery got to a.txt. That row is the same bytes, archived from b.txt now: it goes,
    and does not end "vanished" (disappeared while being written) once b.txt is archived."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    inbox = tmp_path / "inbox"
    twin = _renamed_with_a_scanned_row(ledger, inbox)
    ledger.promote(twin.id)
    assert row_of(ledger, twin.id).state == "queued"
    archive.finish(ledger, row, folder)
    assert not (inbox / "b.txt").exists()
    assert row_of(ledger, row.id).state == "done"
    assert ledger.get(twin.id) is None  # not left to a worker, to end "vanished"


def test_a_walk_cut_short_by_a_descriptor_shortage_does_not_take_the_renamed_file_for_gone(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a.txt, uploaded, renamed to b.txt while syncd was down. Out of file descriptors
    (EMFILE) for the walk that looks for it by its inode, the walk logged "cannot list"
    and found nothing: the row ended "source vanished after a confirmed upload; nothing
    archived" and b.txt, the same bytes, kept its row and was uploaded a second time. The
    row now stays uploaded for the next sweep, which archives b.txt from where it is."""
    import errno

    from syncd import safefs

    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"payload")
    inbox = tmp_path / "inbox"
    twin = _renamed_with_a_scanned_row(ledger, inbox)
    real_walk, real_open_root = safefs.walk, safefs.open_root
    short = {"on": True, "walking": False}

    def walk(*args: object, **kwargs: object) -> Iterator[safefs.Entry]:
        short["walking"] = True
        try:
            yield from real_walk(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            short["walking"] = False

    def open_root(*args: object, **kwargs: object) -> int:
        if short["on"] and short["walking"]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open_root(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safefs, "walk", walk)
    monkeypatch.setattr(safefs, "open_root", open_root)
    with pytest.raises(OSError) as short_of:
        archive.finish(ledger, row, folder)
    assert short_of.value.errno == errno.EMFILE
    assert row_of(ledger, row.id).state == "uploaded"
    assert row_of(ledger, twin.id).state == "settling"  # not sent again meanwhile: still the twin
    short["on"] = False
    archive.finish(ledger, row_of(ledger, row.id), folder)
    done = row_of(ledger, row.id)
    assert done.state == "done" and (tmp_path / "archive" / "inbox" / "a.txt").read_bytes() == b"payload"
    assert ledger.active_for_path(os.fspath(inbox), "b.txt") is None  # not uploaded again
    assert not (inbox / "b.txt").exists()
