"""The watcher against real inotify (and the polling observer) on real folders."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.watcher import Intake, Watcher
from tests.conftest import make_folder


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    w = Watcher(Intake())
    yield w
    w.stop()


class Collected:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.paths: set[str] = set()
        self.scans: set[tuple[str, str]] = set()

    def __call__(self) -> set[str]:
        paths, scans = self.intake.drain()
        for rels in paths.values():
            self.paths |= rels
        self.scans |= scans
        return self.paths


def test_native_events_are_recorded(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path)
    assert watcher.set_folders([folder]) == [os.fspath(folder.path)]
    got = Collected(watcher.intake)
    (folder.path / "a.txt").write_bytes(b"x")
    (folder.path / "junk.part").write_bytes(b"x")
    (folder.path / ".hidden").write_bytes(b"x")
    os.rename(folder.path / "junk.part", folder.path / "renamed.pdf")
    assert wait_for(lambda: {"a.txt", "renamed.pdf"} <= got())
    time.sleep(0.2)
    assert got() == {"a.txt", "renamed.pdf"}


def test_new_subdirectory_requests_a_scan(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path)
    watcher.set_folders([folder])
    got = Collected(watcher.intake)
    outside = tmp_path / "prepared"
    outside.mkdir()
    (outside / "inside.txt").write_bytes(b"x")
    os.rename(outside, folder.path / "moved-in")
    (folder.path / "made").mkdir()
    assert wait_for(lambda: (got(), {("moved-in"), ("made")} <= {r for _, r in got.scans})[1])
    (folder.path / "made" / "later.txt").write_bytes(b"x")
    assert wait_for(lambda: "made/later.txt" in got())


def test_own_directories_inside_the_folder_are_not_watched(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path, archive_dir=tmp_path / "inbox" / "archive")
    (folder.path / "archive").mkdir()
    watcher.set_folders([folder])
    got = Collected(watcher.intake)
    (folder.path / "archive" / "done.txt").write_bytes(b"x")
    (folder.path / "new.txt").write_bytes(b"x")
    assert wait_for(lambda: "new.txt" in got())
    time.sleep(0.2)
    assert "archive/done.txt" not in got()


def test_polling_observer(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path, observer="polling", poll_seconds=0.2)
    watcher.set_folders([folder])
    assert watcher.folders[os.fspath(folder.path)].mode == "polling"
    got = Collected(watcher.intake)
    (folder.path / "a.txt").write_bytes(b"x")
    assert wait_for(lambda: "a.txt" in got())


def test_missing_folder_is_reported_then_armed(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path)
    shutil.rmtree(folder.path)
    assert watcher.set_folders([folder]) == []
    assert "folder missing" in watcher.problems()[os.fspath(folder.path)]
    folder.path.mkdir()
    assert watcher.check_health() == [os.fspath(folder.path)]
    assert watcher.problems() == {}
    got = Collected(watcher.intake)
    (folder.path / "a.txt").write_bytes(b"x")
    assert wait_for(lambda: "a.txt" in got())


def test_deleted_and_recreated_folder_is_watched_again(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path)
    watcher.set_folders([folder])
    shutil.rmtree(folder.path)
    assert watcher.check_health() == []
    assert "folder missing" in watcher.problems()[os.fspath(folder.path)]
    folder.path.mkdir()
    assert watcher.check_health() == [os.fspath(folder.path)]
    got = Collected(watcher.intake)
    (folder.path / "b.txt").write_bytes(b"x")
    assert wait_for(lambda: "b.txt" in got())


def test_deleted_and_created_again_with_the_same_inode_between_checks_is_rearmed(
    tmp_path: Path, watcher: Watcher
) -> None:
    """ext4 often gives a folder created at once after `rm -rf` its old inode number; the
    watch died with the old folder all the same."""
    folder = make_folder(tmp_path)
    watcher.set_folders([folder])
    inode = folder.path.stat().st_ino
    for _ in range(50):
        shutil.rmtree(folder.path)
        folder.path.mkdir()
        if folder.path.stat().st_ino == inode:
            break
    else:
        pytest.skip("this file system gave the new folder another inode each time")
    assert wait_for(lambda: watcher.check_health() == [os.fspath(folder.path)])
    got = Collected(watcher.intake)
    (folder.path / "d.txt").write_bytes(b"x")
    assert wait_for(lambda: "d.txt" in got())


def test_replaced_between_checks_is_rearmed(tmp_path: Path, watcher: Watcher) -> None:
    folder = make_folder(tmp_path)
    watcher.set_folders([folder])
    os.rename(folder.path, tmp_path / "old")
    folder.path.mkdir()
    assert watcher.check_health() == [os.fspath(folder.path)]
    got = Collected(watcher.intake)
    (folder.path / "c.txt").write_bytes(b"x")
    assert wait_for(lambda: "c.txt" in got())


def test_removing_a_folder_releases_it(tmp_path: Path, watcher: Watcher) -> None:
    a, b = make_folder(tmp_path, "a"), make_folder(tmp_path, "b")
    watcher.set_folders([a, b])
    watcher.set_folders([b])
    assert list(watcher.folders) == [os.fspath(b.path)]
    got = Collected(watcher.intake)
    (a.path / "x.txt").write_bytes(b"x")
    (b.path / "y.txt").write_bytes(b"x")
    assert wait_for(lambda: "y.txt" in got())
    time.sleep(0.2)
    assert "x.txt" not in got()
