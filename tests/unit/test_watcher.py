"""The watcher against real inotify (and the polling observer) on real folders."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd import folder_lock
from syncd.safe_watch import PolledFolders
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
        self.scans |= set(scans)
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


def test_a_folder_put_back_as_a_symlink_is_not_followed(tmp_path: Path, watcher: Watcher) -> None:
    """The configured path was resolved when loaded; a symlink put in its place since (or
    at a folder above it) leads where no configuration check looked: reported, not
    watched, until it is a directory again."""
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    watcher.set_folders([folder])
    os.rename(folder.path, tmp_path / "old")
    folder.path.symlink_to(elsewhere)
    assert watcher.check_health() == []
    assert "through a symlink" in watcher.problems()[root]
    assert "through a symlink" in (watcher.problem(root) or "")
    got = Collected(watcher.intake)
    (elsewhere / "x.txt").write_bytes(b"x")
    folder.path.unlink()
    os.rename(tmp_path / "old", folder.path)
    assert watcher.check_health() == [root]
    (folder.path / "y.txt").write_bytes(b"y")
    assert wait_for(lambda: "y.txt" in got())
    assert "x.txt" not in got()
    # a folder above it swapped for a symlink: the same
    nested = make_folder(tmp_path, "top/inbox")
    watcher.set_folders([nested])
    os.rename(tmp_path / "top", tmp_path / "top-old")
    (tmp_path / "top").symlink_to(tmp_path / "top-old")
    assert watcher.check_health() == []
    assert "through a symlink" in watcher.problems()[os.fspath(nested.path)]


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


def test_a_folder_another_watcher_holds_is_reported_until_free(tmp_path: Path, watcher: Watcher) -> None:
    """Two daemons with their own state_dir on one folder would both upload its files: the
    second reports it as another syncd's, never watches it, and takes it over once free."""
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    assert watcher.set_folders([folder]) == [root]
    second = Watcher(Intake())
    try:
        assert second.set_folders([folder]) == []
        assert second.problems()[root].startswith("already watched by")
        assert second.problem(root) == second.problems()[root]  # what settle and the uploader ask
        assert second.check_health() == []
        got = Collected(second.intake)
        (folder.path / "a.txt").write_bytes(b"x")
        assert wait_for(lambda: "a.txt" in Collected(watcher.intake)())
        assert got() == set()
        watcher.set_folders([])  # the first lets go (its config dropped the folder, or it stopped)
        assert second.check_health() == [root]
        assert second.problem(root) is None and second.problems() == {}
        (folder.path / "b.txt").write_bytes(b"x")
        assert wait_for(lambda: "b.txt" in got())
    finally:
        second.stop()


def test_a_reload_that_changes_a_folder_keeps_its_lock(tmp_path: Path, watcher: Watcher) -> None:
    """A folder whose settings a reload changed is released and armed again; its lock is
    kept across, so another syncd checking at that moment cannot take the folder over."""
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    watcher.set_folders([folder])
    lock = watcher.folders[root].lock
    assert lock is not None
    assert watcher.set_folders([replace(folder, labels=("new",))]) == [root]
    assert watcher.folders[root].lock is lock and watcher.folders[root].folder.labels == ("new",)


def test_a_lock_name_taken_by_what_is_not_a_syncd_keeps_no_folder(tmp_path: Path, watcher: Watcher) -> None:
    """Anyone may bind an abstract socket name: one bound but not listening (no syncd
    holds a folder that way) does not keep the folder from being watched."""
    folder = make_folder(tmp_path)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squatter.bind(folder_lock._name(folder.path.stat()))
        assert watcher.set_folders([folder]) == [os.fspath(folder.path)]
        assert watcher.problems() == {}
    finally:
        squatter.close()


def _watched_inodes() -> set[tuple[int, int]]:
    """(device, inode) of every directory this process holds an inotify watch on."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("inotify wd:"):
                        fields = dict(kv.split(":", 1) for kv in line.split()[1:])
                        sdev = int(fields["sdev"], 16)
                        found.add((os.makedev(sdev >> 20, sdev & 0xFFFFF), int(fields["ino"], 16)))
        except OSError:
            continue
    return found


def _watch_masks() -> list[int]:
    """The event mask of every inotify watch this process holds."""
    masks = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                masks += [
                    int(dict(kv.split(":", 1) for kv in line.split()[1:])["mask"], 16)
                    for line in f
                    if line.startswith("inotify wd:")
                ]
        except OSError:
            continue
    return masks


def test_the_kernel_reports_only_the_events_syncd_records(tmp_path: Path, watcher: Watcher) -> None:
    """syncd opens and reads every file it settles, hashes and archives: with watchdog's
    default mask each open and close was an event parsed in Python and thrown away. A
    subdirectory deleted and made again is still watched (IN_DELETE stays in the mask)."""
    from watchdog.observers.inotify_c import InotifyConstants as C

    folder = make_folder(tmp_path, recursive=True)
    (folder.path / "sub").mkdir()
    watcher.set_folders([folder])
    masks = _watch_masks()
    assert len(masks) == 2
    for mask in masks:
        assert not mask & (C.IN_OPEN | C.IN_CLOSE_NOWRITE | C.IN_ACCESS), hex(mask)
        wanted = C.IN_CREATE | C.IN_MOVED_TO | C.IN_MOVED_FROM | C.IN_CLOSE_WRITE | C.IN_MODIFY | C.IN_DELETE
        assert mask & wanted == wanted, hex(mask)
    got = Collected(watcher.intake)
    (folder.path / "sub").rmdir()
    (folder.path / "sub").mkdir()
    assert wait_for(lambda: (got(), ("sub") in {r for _, r in got.scans})[1])
    (folder.path / "sub" / "later.txt").write_bytes(b"x")
    assert wait_for(lambda: "sub/later.txt" in got())


def test_a_directory_swapped_for_a_symlink_gets_no_watch_beyond_the_folder(
    tmp_path: Path, watcher: Watcher
) -> None:
    """A producer creates a directory and at once swaps it for a symlink to a tree outside
    (`mkdir x; mv x .old; ln -s /elsewhere x`), again and again. watchdog's own observer
    walked the link's target by path: a watch on every directory there (the whole host,
    with `ln -s / x`) and events for files syncd was never given."""
    folder = make_folder(tmp_path)
    outside = tmp_path / "elsewhere"
    for i in range(20):
        (outside / f"d{i}" / "sub").mkdir(parents=True)
        (outside / f"d{i}" / "sub" / "secret.txt").write_bytes(b"x")
    outside_dirs = {(st.st_dev, st.st_ino) for st in (p.stat() for p in [outside, *outside.rglob("*")])}
    watcher.set_folders([folder])
    got = Collected(watcher.intake)
    for i in range(200):
        x = folder.path / "x"
        x.mkdir()
        os.rename(x, folder.path / f".old{i}")
        os.symlink(outside, x)
        if i % 10 == 0:
            time.sleep(0.01)  # let the observer catch up now and then, mid-swap
        os.unlink(x)
    time.sleep(0.5)
    got()
    assert not _watched_inodes() & outside_dirs
    assert not {p for p in got.paths if "secret" in p or p.startswith("x/")}


def test_a_tree_deeper_than_the_scans_go_is_watched_to_their_depth(tmp_path: Path, watcher: Watcher) -> None:
    """1,500 levels: watchdog's recursive walk raised RecursionError, which stopped the
    daemon at start (every folder) or killed event delivery while it ran."""
    folder = make_folder(tmp_path)
    deep = folder.path
    for _ in range(1500):  # os.makedirs recurses too
        deep = deep / "d"
        deep.mkdir()
    assert watcher.set_folders([folder]) == [os.fspath(folder.path)]
    got = Collected(watcher.intake)
    try:
        (folder.path / "d" / "d" / "a.txt").write_bytes(b"x")
        (folder.path / "top.txt").write_bytes(b"x")
        assert wait_for(lambda: {"top.txt", "d/d/a.txt"} <= got())
    finally:  # shutil.rmtree (pytest's clean-up of old runs) recurses too
        watcher.stop()
        (folder.path / "d" / "d" / "a.txt").unlink()
        while deep != folder.path:
            deep.rmdir()
            deep = deep.parent


def test_the_polling_observer_never_looks_through_a_symlink_on_the_way(tmp_path: Path) -> None:
    """A polled directory swapped for a link between two steps of a poll: watchdog's
    snapshot lists and stats by path, and a link at any component but the last was
    followed (the host walked at every poll). Beneath the polled folder, nothing is."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (outside / "usr" / "lib").mkdir(parents=True)
    (inbox / "real" / "sub").mkdir(parents=True)
    os.symlink(outside, inbox / "d")
    polled = PolledFolders()
    polled.add(os.fspath(inbox))
    assert {e.name for e in polled.listdir(os.fspath(inbox))} == {"real", "d"}
    assert [e.name for e in polled.listdir(os.fspath(inbox / "real"))] == ["sub"]
    assert stat.S_ISLNK(polled.lstat(os.fspath(inbox / "d")).st_mode)
    for path in (inbox / "d" / "usr", inbox / "d" / "usr" / "lib"):
        with pytest.raises(FileNotFoundError):
            polled.listdir(os.fspath(path))
        with pytest.raises(FileNotFoundError):
            polled.lstat(os.fspath(path))
    with pytest.raises(FileNotFoundError):  # a path no polled folder holds
        polled.lstat(os.fspath(outside / "usr"))
    deep = inbox.joinpath(*["x"] * 70)
    assert list(polled.listdir(os.fspath(deep))) == []  # the scans' depth: its walk recurses


def test_a_dead_inotify_reader_is_replaced_and_the_folders_rescanned(
    tmp_path: Path, watcher: Watcher
) -> None:
    """One thread reads the kernel's events for every native folder; when it died (a
    RecursionError did it), syncd went on blind, and said the folders were watched."""
    folder = make_folder(tmp_path)
    watcher.set_folders([folder])
    native = watcher._native
    assert native is not None and native.reader_alive()
    reader = native._inotify_fd
    assert reader is not None
    reader.stop()
    reader.join(5)
    assert not native.reader_alive()
    assert watcher.check_health() == [os.fspath(folder.path)]
    got = Collected(watcher.intake)
    (folder.path / "after.txt").write_bytes(b"x")
    assert wait_for(lambda: "after.txt" in got())


def test_lost_events_ask_for_a_rescan_counted_as_an_overflow(tmp_path: Path) -> None:
    """The kernel's inotify queue overflowed (watchdog's ``events_lost``): the whole folder
    is scanned again, and `syncd_rescans_total` says why (it said "directory")."""
    from watchdog.events import FileSystemEvent

    from syncd.event_handler import _Handler

    folder = make_folder(tmp_path)
    intake = Intake()
    lost = FileSystemEvent(os.fspath(folder.path))
    lost.event_type = "events_lost"
    _Handler(folder, intake).on_any_event(lost)
    assert intake.drain() == ({}, {(os.fspath(folder.path), ""): "overflow"})


def test_two_folders_that_are_one_directory_are_watched_once(tmp_path: Path) -> None:
    """Two folders of one config whose paths differ but are one directory (a bind mount:
    the config check compares paths) would each upload every file: the lock is the
    directory's, so the second look at it is told so, as this syncd's own."""
    st = tmp_path.stat()
    lock, problem = folder_lock.take(st)
    try:
        assert lock is not None and problem is None
        again, why = folder_lock.take(st)
        assert again is None and why == (
            "already watched by this syncd as another of its folders (the same directory: a bind mount?)"
        )
    finally:
        folder_lock.release(lock)
    lock, problem = folder_lock.take(st)  # free again once released
    assert lock is not None and problem is None
    folder_lock.release(lock)


@pytest.mark.process
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the holder runs as another user")
def test_a_syncd_run_as_root_honours_the_services_lock(tmp_path: Path) -> None:
    """The service runs as its own user; `syncd once` by hand runs as root (with a config
    of its own): the service's lock keeps it off the folder, as docs/guarantees.md (F26)
    says, instead of both uploading every file."""
    st = tmp_path.stat()
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the service: another user, holding the folder
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgid(65534)
            os.setuid(65534)
            lock, problem = folder_lock.take(st)
            os.write(ready_w, b"y" if lock is not None and problem is None else b"n")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"y"
        lock, problem = folder_lock.take(st)
        folder_lock.release(lock)
        assert lock is None and problem == f"already watched by another syncd (pid {pid})"
    finally:
        os.write(done_w, b"x")
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def test_out_of_descriptors_is_a_folder_problem_that_names_the_right_limit(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncd out of file descriptors when a folder is (re)armed: taking the folder's lock
    raised out of the health check, so the main loop's tick failed ("error in the main
    loop", its health check and watchdog pings with it: a restart by systemd); and EMFILE
    from inotify was taken for inotify's instance limit, the folder polled for good with
    "Raise sysctl fs.inotify.max_user_instances", which is not what ran out. Both are
    now the folder's problem, named for what ran out, and it is watched natively once
    descriptors are free."""
    import errno

    from syncd import limits

    folder = make_folder(tmp_path, "inbox")
    real_socket = socket.socket
    short = {"lock": True, "watch": True}

    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        if short["lock"]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_socket(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(folder_lock.socket, "socket", no_socket)
    assert watcher.set_folders([folder]) == []
    root = os.fspath(folder.path)
    assert watcher.problems()[root] == "cannot take its lock (Too many open files)"
    short["lock"] = False
    observer = watcher._native_observer()
    real_schedule = observer.schedule

    def no_inotify(*args: object, **kwargs: object) -> object:
        if short["watch"]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_schedule(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(observer, "schedule", no_inotify)
    monkeypatch.setattr(limits, "out_of_descriptors", lambda: True)
    assert watcher.check_health() == []
    problem = watcher.problems()[root]
    assert "out of file descriptors" in problem and "LimitNOFILE=" in problem, problem
    assert watcher.fallbacks() == {}
    short["watch"] = False
    assert watcher.check_health() == [root]
    assert watcher.problems() == {} and watcher.folders[root].mode == "native"


def test_a_tree_walked_short_of_descriptors_is_not_taken_for_an_inotify_limit(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arming a folder walks its tree to watch each sub-directory, then counts them to
    check the kernel gave a watch to each. Out of file descriptors (EMFILE) to list one,
    the walk skipped it: its sub-directories got no watch, the count found them, and the
    folder was polled for good, said as "inotify limit reached (raise sysctl
    fs.inotify.max_user_watches)", which is not what ran out. The attempt now ends as
    the shortage it is, and the folder is watched natively at the next health check."""
    import errno

    from syncd import safefs

    folder = make_folder(tmp_path, "inbox")
    (folder.path / "a" / "b").mkdir(parents=True)
    real_open = safefs.open_beneath
    short = {"a": 1}

    def open_short(dirfd: int, rel: str, flags: int, *args: object, **kwargs: object) -> int:
        if short.get(rel) and flags == safefs.READ_DIR_FLAGS:  # the walk listing a/, once
            short[rel] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(dirfd, rel, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safefs, "open_beneath", open_short)
    root = os.fspath(folder.path)
    assert watcher.set_folders([folder]) == []
    assert watcher.fallbacks() == {}
    problem = watcher.problems()[root]
    assert "out of file descriptors" in problem and "LimitNOFILE=" in problem, problem
    assert any(p.startswith("out of file descriptors") for p in watcher.shortages.describe())
    assert watcher.check_health() == [root]
    assert watcher.problems() == {} and watcher.folders[root].mode == "native"
    got = Collected(watcher.intake)
    (folder.path / "a" / "b" / "deep.txt").write_bytes(b"x")
    assert wait_for(lambda: "a/b/deep.txt" in got())


def test_a_new_sub_folder_syncd_had_no_descriptor_to_watch_is_watched_once_descriptors_are_free(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new sub-folder of a watched folder is opened to get its watch. Out of file
    descriptors (EMFILE) for that, it was taken for gone: it got no watch, without a
    word, until a restart, and files saved in it waited for the periodic rescan. The
    shortage is now said once, the folder stays watched as it is while it lasts (not
    polled: no inotify limit was reached), and once descriptors are free it is watched
    again and rescanned."""
    import errno

    from syncd import limits, safefs

    folder = make_folder(tmp_path, "inbox")
    root = os.fspath(folder.path)
    assert watcher.set_folders([folder]) == [root]
    real_open = safefs.open_beneath
    short = [True]

    def open_short(dirfd: int, rel: str, flags: int, *args: object, **kwargs: object) -> int:
        if short[0] and rel == "new" and flags == os.O_PATH | os.O_DIRECTORY:  # its watch's
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(dirfd, rel, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safefs, "open_beneath", open_short)
    monkeypatch.setattr(limits, "out_of_descriptors", lambda: short[0])
    got = Collected(watcher.intake)
    (folder.path / "new").mkdir()
    assert wait_for(lambda: (got(), "new" in {r for _, r in got.scans})[1])
    assert watcher.check_health() == []  # still short: watched as it is meanwhile
    assert watcher.problems() == {} and watcher.fallbacks() == {}
    assert watcher.folders[root].mode == "native"
    assert any(p.startswith("out of file descriptors") for p in watcher.shortages.describe())
    short[0] = False
    assert watcher.check_health() == [root]  # watched again, to be rescanned
    assert watcher.folders[root].mode == "native" and watcher.fallbacks() == {}
    (folder.path / "new" / "later.txt").write_bytes(b"x")
    assert wait_for(lambda: "new/later.txt" in got())
    assert watcher.check_health() == []
