"""Archiving and failing files against a producer who plants links and swaps names.

The invariants: nothing outside the inbox, archive_dir and failed_dir is
read, written or moved; the archived bytes are the uploaded bytes; no user
file is ever overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import archive, aside, failed, moves, safefs
from syncd.ledger import Ledger
from tests.conftest import FakeClock, make_folder, row_of
from tests.unit.test_archive import _uploaded


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.txt").write_bytes(b"VICTIM")
    return out


def _tree(path: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_planted_archive_subdirectory_link_is_never_followed(
    tmp_path: Path, ledger: Ledger, outside: Path
) -> None:
    folder = make_folder(tmp_path)
    (tmp_path / "archive" / "inbox").mkdir(parents=True)
    os.symlink(outside, tmp_path / "archive" / "inbox" / "sub")
    row = _uploaded(ledger, folder, "sub/a.txt", b"payload")
    with pytest.raises(safefs.UnsafePath):
        archive.finish(ledger, row, folder)
    assert _tree(outside) == {"victim.txt": b"VICTIM"}
    assert (tmp_path / "inbox" / "sub" / "a.txt").read_bytes() == b"payload"  # nothing lost
    assert row_of(ledger, row.id).state == "uploaded"


def test_inbox_directory_swapped_for_a_link_after_upload(
    tmp_path: Path, ledger: Ledger, outside: Path
) -> None:
    """The uploaded file's directory becomes a link to another tree: nothing there moves.
    The uploaded file itself, renamed with its directory, is found by its inode (as after a
    restart) and archived under its original name."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "x/victim.txt", b"decoy")
    inbox = tmp_path / "inbox"
    os.rename(inbox / "x", inbox / ".hidden")
    os.symlink(outside, inbox / "x")
    archive.finish(ledger, row, folder)
    assert _tree(outside) == {"victim.txt": b"VICTIM"}
    assert not (inbox / ".hidden" / "victim.txt").exists()
    assert _tree(tmp_path / "archive") == {"inbox/x/victim.txt": b"decoy"}
    done = ledger.get(row.id)
    assert done is not None and done.state == "done"
    assert done.location == str(tmp_path / "archive" / "inbox" / "x" / "victim.txt")


def test_name_swapped_for_a_symlink_archives_the_uploaded_descriptor_only(
    tmp_path: Path, ledger: Ledger, outside: Path
) -> None:
    """Between the upload and the move the name becomes a link: no link reaches the archive."""
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"uploaded bytes")
    inbox = tmp_path / "inbox"
    fd = os.open(inbox / "a.txt", os.O_RDONLY)
    try:
        os.rename(inbox / "a.txt", inbox / ".a.txt.swp")
        os.symlink(outside / "victim.txt", inbox / "a.txt")
        archive.finish(ledger, row, folder, fd)
    finally:
        os.close(fd)
    for p in (tmp_path / "archive").rglob("*") if (tmp_path / "archive").exists() else []:
        assert not p.is_symlink(), f"a symlink reached the archive: {p}"
    assert os.path.islink(inbox / "a.txt")  # left alone
    assert (outside / "victim.txt").read_bytes() == b"VICTIM"
    assert (inbox / ".a.txt.swp").read_bytes() == b"uploaded bytes"


def test_archive_race_many_tries(tmp_path: Path, ledger: Ledger, outside: Path) -> None:
    """Swap the name for a link at every point of the move, many times: never a link archived,
    never the victim's bytes, the uploaded bytes never lost."""
    folder = make_folder(tmp_path)
    inbox = tmp_path / "inbox"
    for i in range(200):
        row = _uploaded(ledger, folder, f"f{i}.txt", f"uploaded {i}".encode())
        fd = os.open(inbox / f"f{i}.txt", os.O_RDONLY)
        try:
            if i % 2:
                os.rename(inbox / f"f{i}.txt", inbox / f".f{i}.swp")
                os.symlink(outside / "victim.txt", inbox / f"f{i}.txt")
            archive.finish(ledger, row, folder, fd)
        finally:
            os.close(fd)
    arch = tmp_path / "archive" / "inbox"
    for p in arch.iterdir():
        assert not p.is_symlink()
        assert p.read_bytes().startswith(b"uploaded ")
    assert len(list(arch.iterdir())) == 100
    assert len([p for p in inbox.iterdir() if p.name.endswith(".swp")]) == 100


def test_cross_device_copy_is_made_from_the_uploaded_descriptor(tmp_path: Path, ledger: Ledger) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        folder = make_folder(tmp_path, archive_dir=Path(other) / "arch")
        row = _uploaded(ledger, folder, "a.txt", b"the uploaded bytes")
        fd = os.open(tmp_path / "inbox" / "a.txt", os.O_RDONLY)
        try:
            archive.finish(ledger, row, folder, fd)
        finally:
            os.close(fd)
        assert (Path(other) / "arch" / "a.txt").read_bytes() == b"the uploaded bytes"


def test_a_hard_link_kept_by_the_producer_cannot_change_the_archive(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"original")
    kept = tmp_path / "producer-keeps"
    os.link(tmp_path / "inbox" / "a.txt", kept)
    archive.finish(ledger, row, folder)
    archived = tmp_path / "archive" / "inbox" / "a.txt"
    assert archived.read_bytes() == b"original"
    assert os.stat(archived).st_ino != os.stat(kept).st_ino
    with open(kept, "r+b") as f:
        f.write(b"TAMPERED")
    assert archived.read_bytes() == b"original"


def test_bytes_changed_through_a_hard_link_after_upload_are_not_archived(
    tmp_path: Path, ledger: Ledger
) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"original")
    kept = tmp_path / "producer-keeps"
    os.link(tmp_path / "inbox" / "a.txt", kept)
    st = os.stat(kept)
    with open(kept, "r+b") as f:
        f.write(b"ORIGINAL")  # same size; mtime put back so only the bytes tell
    os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns))
    archive.finish(ledger, row, folder)
    assert not (tmp_path / "archive" / "inbox" / "a.txt").exists()
    assert (tmp_path / "inbox" / "a.txt").read_bytes() == b"ORIGINAL"  # kept, a new version
    done = ledger.get(row.id)
    assert done is not None and done.state == "done" and "changed after upload" in (done.last_error or "")
    again = ledger.active_for_path(os.fspath(folder.path), "a.txt")
    assert again is not None and again.state == "settling"


def test_sidecar_never_overwrites_a_user_file(tmp_path: Path, ledger: Ledger) -> None:
    """A failed file named report.error.json, then a failed file report: both survive."""
    folder = make_folder(tmp_path)
    first = _uploaded(ledger, folder, "report.error.json", b"the user's own json")
    failed.to_failed(ledger, first, folder, "HTTP 400: refused")
    second = _uploaded(ledger, folder, "report", b"the report")
    failed.to_failed(ledger, second, folder, "HTTP 400: refused too")
    fdir = tmp_path / "failed" / "inbox"
    kept = ledger.get(first.id)
    assert kept is not None and kept.location is not None
    assert Path(kept.location).read_bytes() == b"the user's own json"
    assert (fdir / "report").read_bytes() == b"the report"
    sidecars = [
        json.loads(p.read_bytes())
        for p in fdir.iterdir()
        if p.name.startswith("report.error") and p.read_bytes().startswith(b"{\n")
    ]
    assert sorted(s["uuid"] for s in sidecars) == sorted([first.uuid, second.uuid])
    assert (fdir / "report.error (1).json").exists()


def test_failing_again_replaces_only_its_own_sidecar(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt")
    failed.to_failed(ledger, row, folder, "first reason")
    again = ledger.get(row.id)
    assert again is not None
    failed.to_failed(ledger, again, folder, "second reason")
    fdir = tmp_path / "failed" / "inbox"
    assert sorted(p.name for p in fdir.iterdir()) == ["a.txt", "a.txt.error.json"]
    assert json.loads((fdir / "a.txt.error.json").read_text())["reason"] == "second reason"
    assert stat.S_IMODE(os.stat(fdir).st_mode) == 0o700


def test_planted_links_in_failed_dir_are_not_written_through(
    tmp_path: Path, ledger: Ledger, outside: Path
) -> None:
    folder = make_folder(tmp_path)
    fdir = tmp_path / "failed" / "inbox"
    fdir.mkdir(parents=True)
    os.symlink(outside / "victim.txt", fdir / "a.txt.error.json")
    os.symlink(outside / "victim.txt", fdir / "a.txt.error.json.tmp")
    row = _uploaded(ledger, folder, "a.txt")
    failed.to_failed(ledger, row, folder, "refused")
    assert (outside / "victim.txt").read_bytes() == b"VICTIM"
    assert (fdir / "a.txt").read_bytes() == b"hello"
    assert json.loads((fdir / "a.txt.error (1).json").read_text())["uuid"] == row.uuid


def test_a_file_replaced_before_failing_is_not_moved(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "a.txt", b"first")
    (tmp_path / "inbox" / "a.txt").unlink()
    (tmp_path / "inbox" / "a.txt").write_bytes(b"a new file, never tried")
    failed.to_failed(ledger, row, folder, "refused")
    assert (tmp_path / "inbox" / "a.txt").read_bytes() == b"a new file, never tried"
    assert hashlib.sha256(b"first").hexdigest() == row.sha256
    got = ledger.get(row.id)
    assert got is not None and got.state == "failed" and got.location is None


def _save_atomically(path: Path, data: bytes) -> None:
    """What editors and careful producers do: write a temp file, rename it over the name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


@pytest.mark.parametrize("after_upload", ["archive", "delete"])
def test_a_new_version_saved_over_the_name_while_it_is_removed_is_kept(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, after_upload: str
) -> None:
    """The producer saves version 2 over f.txt between syncd's look at the name and its
    unlink: the unlink must not remove version 2 (it was lost, silently). Version 2 stays
    under its name and gets a row of its own."""
    folder = make_folder(tmp_path, after_upload=after_upload)
    row = _uploaded(ledger, folder, "f.txt", b"version 1")
    path = tmp_path / "inbox" / "f.txt"
    real = moves.Held.still_named

    def look_then_save(held: moves.Held) -> bool:
        named = real(held)
        _save_atomically(path, b"version 2")
        return named

    monkeypatch.setattr(moves.Held, "still_named", look_then_save)
    archive.finish(ledger, row, folder)
    assert path.read_bytes() == b"version 2"
    if after_upload == "archive":
        assert (tmp_path / "archive" / "inbox" / "f.txt").read_bytes() == b"version 1"
    assert ledger.get(row.id).state == "done"
    assert ledger.active_for_path(os.fspath(tmp_path / "inbox"), "f.txt") is not None
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_a_name_taken_twice_while_the_uploaded_file_is_removed_keeps_both_new_files(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path)
    row = _uploaded(ledger, folder, "f.txt", b"version 1")
    path = tmp_path / "inbox" / "f.txt"
    real_look, real_rename = moves.Held.still_named, os.rename

    def look_then_save(held: moves.Held) -> bool:
        named = real_look(held)
        _save_atomically(path, b"version 2")
        return named

    def rename(src: object, dst: object, **kwargs: object) -> None:
        real_rename(src, dst, **kwargs)  # type: ignore[arg-type]
        if str(dst).startswith(aside.UNLINK_PREFIX):
            _save_atomically(path, b"version 3")

    monkeypatch.setattr(moves.Held, "still_named", look_then_save)
    monkeypatch.setattr(os, "rename", rename)
    archive.finish(ledger, row, folder)
    monkeypatch.undo()
    assert path.read_bytes() == b"version 3"
    assert (path.parent / "f (1).txt").read_bytes() == b"version 2"
    assert (tmp_path / "archive" / "inbox" / "f.txt").read_bytes() == b"version 1"
