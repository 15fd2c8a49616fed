"""Failure scenarios about the local files (docs/guarantees.md, F2-F7, F30), real daemon.

To act "during the upload", the emulator is told to hold the storage PUT for a
while (a scripted ``slow`` fault) and the test changes the file meanwhile.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Setup, rewrite_in_place, sha, wait_until

pytestmark = pytest.mark.process

MIB = 1024 * 1024


def _needs_leases(folder: Path) -> None:
    """Skip, saying why, where the kernel cannot tell whether a file is open for writing."""
    from syncd import writers

    fd = os.open(folder, os.O_RDONLY)
    try:
        kind = writers.fs_type(fd)
    finally:
        os.close(fd)
    if kind not in writers.LOCAL_FS:
        pytest.skip(f"{folder} is on a file system without usable leases (statfs type {kind})")


def _hold_put(s: Setup, op: str = "lilt.put", delay: float = 2.0) -> None:
    s.emulator.set_faults(script=[{"op": op, "kind": "slow", "delay": delay, "count": 1}])


def _put_arrived(s: Setup) -> bool:
    """The held request has reached the emulator (its slow fault fired): the body is sent.

    A change to the file after this is a change *during* the upload. The row says "uploading"
    a little earlier, before a worker opens the file: a change in between is seen as the
    file the worker opens, and the test would not test what it says."""
    return not s.emulator.faults.snapshot()["script"]


def test_f2_appended_during_single_put_uploads_the_new_version(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3}])
    s.start()
    _hold_put(s)
    path = s.drop("a.txt", b"first version")
    wait_until(lambda: _put_arrived(s), 10, what="the PUT")
    with open(path, "ab") as f:
        f.write(b" plus more")
    s.dropped[("in", "a.txt")] = b"first version plus more"
    wait_until(lambda: s.all_done(1), 20, what="the new version")
    archived = (s.archive() / "a.txt").read_bytes()
    assert archived == b"first version plus more"
    states = sorted(r.state for r in s.rows())
    assert states == ["done", "vanished"]
    assert any(u["sha256"] == sha(archived) for u in s.emulator.uploads())
    s.wait_logged("changed during upload")
    s.invariants()


def test_f2_changed_between_parts_aborts_the_multipart_upload(setup: Callable[..., Setup]) -> None:
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.3}],
        lilt={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )
    s.start()
    _hold_put(s, "lilt.put_part")
    data = os.urandom(11 * MIB)
    path = s.drop("big.bin", data)
    # Part 1 is at the emulator (held 2 s) before part 2's bytes change: changed *between*
    # parts, not before the upload began (then nothing would be open to cancel).
    wait_until(lambda: _put_arrived(s), 10, what="the PUT of part 1")
    with open(path, "r+b") as f:  # same size, new bytes, new mtime
        f.seek(7 * MIB)
        f.write(b"X" * 1000)
    new = path.read_bytes()
    s.dropped[("in", "big.bin")] = new
    wait_until(lambda: s.all_done(1), 30, what="the new version")
    ops = [r["op"] for r in s.emulator.requests()]
    assert "lilt.cancel" in ops, "the abandoned multipart upload was not cancelled"
    assert (s.archive() / "big.bin").read_bytes() == new
    s.invariants()


def test_f2_same_size_rewrite_with_restored_mtime_is_caught(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3}])
    s.start()
    _hold_put(s)
    path = s.drop("a.txt", b"AAAAAAAAAA")
    st = path.stat()
    wait_until(lambda: _put_arrived(s), 10, what="the PUT of the first bytes")
    time.sleep(0.2)  # the 10-byte body follows the headers at once
    with open(path, "r+b") as f:
        f.write(b"BBBBBBBBBB")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from mtime
    s.dropped[("in", "a.txt")] = b"BBBBBBBBBB"
    wait_until(lambda: s.all_done(1), 20, what="the rewritten version")
    assert (s.archive() / "a.txt").read_bytes() == b"BBBBBBBBBB"
    s.wait_logged("rewritten during upload")
    s.invariants()


def test_f2_same_size_rewrite_while_syncd_was_down_is_not_resumed(setup: Callable[..., Setup]) -> None:
    """syncd is killed after part 1 of 3 is confirmed; while it is down the file's first
    MiB is rewritten in place and its mtime set back. The next start must not resume from
    part 1, which holds the old bytes: the service would hold a mix of both versions, and
    the ledger and the archive the new one. Only the inode change time tells."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.3}],
        lilt={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )
    old = os.urandom(10 * MIB + 1234)  # three parts
    path = s.drop("big.bin", old)
    proc = s.start(extra_env={"SYNCD_CRASH_AT": "ledger.checkpoint:2"})  # part 1 confirmed
    assert proc.wait(60) == 137  # os._exit(137) at the crash point, as after a SIGKILL
    assert s.confirmed_parts() == 1
    st = path.stat()
    new = os.urandom(MIB) + old[MIB:]
    with open(path, "r+b") as f:
        f.write(new[:MIB])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    s.dropped[("in", "big.bin")] = new
    s.start()
    wait_until(lambda: s.all_done(1), 60, what="the upload of the new version")
    assert (s.archive() / "big.bin").read_bytes() == new
    s.wait_logged("the file was changed since its first parts were sent; starting over")
    s.invariants()  # the service holds exactly the new bytes


def _renamed_during_upload(s: Setup) -> None:
    """draft.txt is renamed to final.txt while its upload is held; until it is done."""
    s.start()
    _hold_put(s, delay=2.5)
    path = s.drop("draft.txt", b"the contract")
    wait_until(lambda: _put_arrived(s), 10, what="the PUT")
    os.rename(path, path.with_name("final.txt"))
    wait_until(lambda: s.all_done(1), 20, what="done")


def test_f3_renamed_during_upload_is_uploaded_once(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3}])
    _renamed_during_upload(s)
    time.sleep(1.5)  # give the renamed path every chance to be uploaded again
    uploads = s.emulator.uploads()
    assert len(uploads) == 1 and uploads[0]["times_received"] == 1
    assert [p.name for p in s.archive().iterdir()] == ["draft.txt"]  # archived under its original name
    assert not list(s.inbox().iterdir())
    assert s.counts() == {"done": 1}
    assert "renamed to" in s.log_text()


def test_f3_renamed_during_upload_and_kept_is_not_uploaded_again_by_scans(
    setup: Callable[..., Setup],
) -> None:
    """after_upload = "keep": the file stays under its new name; rescans and a restart
    must know it as the version already uploaded."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.3, "after_upload": "keep"}], daemon={"rescan_seconds": 1}
    )
    _renamed_during_upload(s)
    s.wait_logged("it is kept there")
    time.sleep(2.5)  # two rescans
    _restarted_still_one_upload(s)
    assert [p.name for p in s.inbox().iterdir() if not p.name.startswith(".")] == ["final.txt"]
    assert s.counts() == {"done": 1}


def _kept_row_ctime(s: Setup) -> int | None:
    (row,) = [r for r in s.rows() if r.state == "done"]
    return row.ctime_ns


@pytest.mark.parametrize("when", ["running", "stopped"])
def test_f30_kept_file_rewritten_in_place_with_its_mtime_set_back_is_uploaded_again(
    setup: Callable[..., Setup], when: str
) -> None:
    """after_upload = "keep": a.txt is uploaded and stays. Its producer then rewrites it in
    place, same size, and sets its mtime back (`cp --preserve=timestamps`, `rsync -t
    --inplace`): size, mtime and inode are all as recorded. The events (while syncd runs)
    and the scan at the next start took it for the version already uploaded, and the new
    bytes were never sent. Its inode change time moved: it is hashed, and uploaded as the
    new version it is."""
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3, "after_upload": "keep"}])
    s.start()
    path = s.drop("a.txt", b"first version")
    wait_until(lambda: s.all_done(1), 20, what="the first upload")
    if when == "stopped":
        assert s.stop() == 0
    rewrite_in_place(path, b"other version")
    s.dropped[("in", "a.txt")] = b"other version"
    if when == "stopped":
        s.start()
    wait_until(lambda: s.all_done(2), 20, what="the upload of the rewritten bytes")
    assert sorted(u["sha256"] for u in s.emulator.uploads()) == sorted(
        [sha(b"first version"), sha(b"other version")]
    )
    assert sorted(r.state for r in s.rows()) == ["done", "done"]
    assert path.read_bytes() == b"other version"  # still kept
    s.wait_logged("rewritten in place after its upload")
    s.invariants()


def test_f30_a_kept_file_only_chmodded_is_not_uploaded_again(setup: Callable[..., Setup]) -> None:
    """The inode change time also moves with a chmod, a chown, a link or a rename, which
    leave the bytes as they were: the file is hashed once, its new ctime recorded, and
    nothing is uploaded again, neither for the event nor by rescans or a restart. syncd's
    own upload (the settle stage's read lease, the reads) leaves the ctime as recorded, so
    scans read no kept file no one touched."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.3, "after_upload": "keep"}], daemon={"rescan_seconds": 1}
    )
    s.start()
    path = s.drop("a.txt", b"kept as it is")
    wait_until(lambda: s.all_done(1), 20, what="the upload")
    time.sleep(1.5)  # a rescan
    assert _kept_row_ctime(s) == path.stat().st_ctime_ns
    os.chmod(path, 0o640)
    wait_until(lambda: _kept_row_ctime(s) == path.stat().st_ctime_ns, 10, what="the new ctime recorded")
    time.sleep(2.5)  # the event's look, and two rescans
    _restarted_still_one_upload(s)
    assert s.counts() == {"done": 1}
    assert "rewritten in place" not in s.log_text()
    s.invariants()


def test_f4_deleted_during_upload(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3}])
    s.start()
    _hold_put(s)
    path = s.drop("gone.txt", b"short-lived")
    wait_until(lambda: _put_arrived(s), 10, what="the PUT")
    path.unlink()
    del s.dropped[("in", "gone.txt")]
    wait_until(lambda: s.counts() == {"done": 1}, 20, what="done without archive")
    row = s.rows()[0]
    assert row.location is None
    s.wait_logged("nothing archived")
    assert not s.archive().exists() or not list(s.archive().iterdir())
    assert s.proc is not None and s.proc.poll() is None  # no crash


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_f3_f4_a_multipart_upload_stands_when_its_file_is_renamed_or_deleted(
    setup: Callable[..., Setup], how: str
) -> None:
    """Renamed or deleted while part 2 of 3 is held: the bytes are still the file's, so the
    upload is completed once, as with a single PUT. The multi-part driver asked where the
    file was before completing: it aborted the upload, and a deleted file was never
    delivered (a renamed one was sent again from the start)."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.3}],
        lilt={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )
    s.start()
    s.wait_started()
    _hold_put(s, op="lilt.put_part", delay=2.5)
    data = os.urandom(11 * MIB)
    path = s.drop("draft.bin", data)
    wait_until(lambda: _put_arrived(s), 20, what="the first part held")
    if how == "renamed":
        os.rename(path, path.with_name("final.bin"))
    else:
        path.unlink()
        del s.dropped[("in", "draft.bin")]
    wait_until(lambda: s.counts() == {"done": 1}, 40, what="the upload completed")
    time.sleep(1.5)  # give a renamed path every chance to be uploaded again
    ops = [r["op"] for r in s.emulator.requests()]
    assert ops.count("lilt.initiate_multipart") == 1 and ops.count("lilt.cancel") == 0
    [upload] = s.emulator.uploads()
    assert upload["sha256"] == sha(data)
    archived = [p.name for p in s.archive().iterdir()] if s.archive().exists() else []
    assert archived == (["draft.bin"] if how == "renamed" else [])


def test_f4_replaced_during_upload_uploads_both_versions(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3}])
    s.start()
    _hold_put(s)
    path = s.drop("report.txt", b"version 1")
    wait_until(lambda: _put_arrived(s), 10, what="the PUT")
    tmp = path.with_name(".report.txt.tmp")
    tmp.write_bytes(b"version 2, longer")
    os.rename(tmp, path)  # atomic replace, as editors do
    s.dropped[("in", "report.txt")] = b"version 2, longer"
    wait_until(lambda: s.counts().get("done") == 2, 20, what="both versions")
    hashes = {u["sha256"] for u in s.emulator.uploads()}
    assert hashes == {sha(b"version 1"), sha(b"version 2, longer")}
    assert (s.archive() / "report.txt").read_bytes() == b"version 2, longer"


@pytest.mark.parametrize("settle", [0.3, 0.0])
def test_f1_a_writer_pausing_longer_than_settle_is_waited_for(
    setup: Callable[..., Setup], settle: float
) -> None:
    """A slow copy that stalls with the file open (a network hiccup, a scanner between
    pages) is not finished, however long the stall: the kernel says a process holds it
    open for writing, and syncd waits for the close."""
    s = setup(folders=[{"name": "in", "settle_seconds": settle}])
    _needs_leases(s.inbox())
    s.start()
    s.wait_started()
    path = s.inbox() / "scan.pdf"
    with open(path, "wb") as f:
        f.write(b"page 1\n")
        f.flush()
        s.wait_logged("still open for writing by a process", timeout=10)
        time.sleep(max(1.0, 4 * settle))  # well past the quiet time, the file still open
        assert not s.emulator.uploads() and s.counts().get("queued", 0) == 0
        f.write(b"page 2\n")
    s.dropped[("in", "scan.pdf")] = b"page 1\npage 2\n"
    wait_until(lambda: s.all_done(1), 15, what="the whole file")
    assert [u["sha256"] for u in s.emulator.uploads()] == [sha(b"page 1\npage 2\n")]
    s.invariants()


def test_f1_once_leaves_a_file_still_open_for_writing_to_the_next_run(
    setup: Callable[..., Setup],
) -> None:
    """`syncd once` (a cron job) does not wait for a writer that keeps its file open: it
    sends the rest, says what it left, and exits 1; the next run sends the whole file."""
    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}])
    _needs_leases(s.inbox())
    s.drop("done.txt", b"finished")
    path = s.inbox() / "open.log"
    with open(path, "wb") as f:
        f.write(b"first half ")
        f.flush()
        once = s.cli("once", "--no-progress")
        assert once.returncode == 1, once.stdout + once.stderr
        assert "still open for writing by a process" in once.stdout + once.stderr
        assert "1 left for the next run" in once.stdout, once.stdout
        f.write(b"second half")
    assert s.counts() == {"done": 1, "settling": 1}
    again = s.cli("once", "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    s.dropped[("in", "open.log")] = b"first half second half"
    assert sorted(u["sha256"] for u in s.emulator.uploads()) == sorted(
        [sha(b"finished"), sha(b"first half second half")]
    )


def test_f5_many_events_for_one_file_make_one_upload(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.5}])
    s.start()
    s.wait_started()
    path = s.inbox() / "busy.txt"
    for _ in range(3):  # three open/write/close cycles, then two touches
        with open(path, "ab") as f:
            f.write(b"x" * 10)
    os.utime(path)
    os.utime(path)
    s.dropped[("in", "busy.txt")] = path.read_bytes()
    wait_until(lambda: s.all_done(1), 15, what="upload")
    time.sleep(1.0)
    assert len(s.emulator.uploads()) == 1 and s.counts() == {"done": 1}


def test_f6_f7_flood_while_stopped_is_all_ledgered_by_a_rescan(setup: Callable[..., Setup]) -> None:
    """20,000 files created while the daemon is SIGSTOPped: inotify's queue overflows
    (16,384 events); watchdog reports the overflow, and syncd scans the folder at once
    instead of waiting for the periodic rescan (an hour here)."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 3600}],  # keep them settling
        daemon={"rescan_seconds": 3600, "workers": 1},
    )
    proc = s.start()
    s.wait_started()
    os.kill(proc.pid, signal.SIGSTOP)
    inbox = s.inbox()
    for i in range(20_000):
        fd = os.open(inbox / f"f{i:05d}.dat", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    os.kill(proc.pid, signal.SIGCONT)
    wait_until(lambda: len(s.rows()) >= 20_000, 30, 0.5, "all 20,000 ledgered")
    assert len({r.relpath for r in s.rows()}) == 20_000
    assert "file events were lost in" in s.log_text()
    rss_kib = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
    assert rss_kib < 300 * 1024, f"RSS {rss_kib} KiB after the flood"
    assert s.stop() == 0


def test_hard_links_of_one_file_go_one_after_the_other_without_a_pause(
    make_setup: Callable[..., Setup],
) -> None:
    """Each name of a hard-linked file is a file of its own, sent one after the other (never
    two uploads of one inode at once). The next name waited for the settle stage's next
    look, a second after the last upload: 20 names took 19 s. The end of an upload now
    makes the next name due at once (about half a second for all 20)."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0}])
    s.start()
    s.wait_started()
    src = s.inbox() / ".writing"
    src.write_bytes(b"same bytes")
    started = time.monotonic()
    for i in range(20):
        os.link(src, s.inbox() / f"link{i}.txt")
    src.unlink()
    wait_until(lambda: s.counts().get("done", 0) == 20, 60, what="20 names done")
    took = time.monotonic() - started
    assert took < 10, f"20 names of one file took {took:.1f}s: they waited for a poll"
    names = sorted(u["filename"] for u in s.emulator.uploads())
    assert names == sorted(f"link{i}.txt" for i in range(20))
    s.invariants()


def _restarted_still_one_upload(s: Setup) -> None:
    """Stopped and started again (the scan at start looks at every file): still one upload,
    received once."""
    assert s.stop() == 0
    s.start()
    s.wait_started()
    time.sleep(1.5)
    uploads = s.emulator.uploads()
    assert len(uploads) == 1 and uploads[0]["times_received"] == 1
