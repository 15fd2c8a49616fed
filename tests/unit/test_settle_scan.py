from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from syncd import scanner, writers
from syncd.config import FolderConfig
from syncd.ledger import Ledger
from syncd.settle import Settler
from tests.conftest import FakeClock, make_folder


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def _scanned(tmp_path: Path, ledger: Ledger, n: int) -> FolderConfig:
    """A folder (settle_seconds = 0) holding ``n`` one-byte files, scanned into the ledger."""
    folder = make_folder(tmp_path, settle_seconds=0.0)
    for i in range(n):
        (folder.path / f"f{i}.txt").write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    return folder


def _settler(ledger: Ledger, folder: FolderConfig, clock: FakeClock) -> Settler:
    return Settler(ledger, lambda: {os.fspath(folder.path): folder}, clock=clock)


def test_quiet_file_is_queued_after_settle_seconds(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder = make_folder(tmp_path, settle_seconds=2.0)
    (folder.path / "a.txt").write_bytes(b"abc")
    assert scanner.scan_folder(ledger, folder) == 1
    settler = _settler(ledger, folder, clock)
    assert settler.tick() == 0  # first look: stat recorded
    clock.advance(1.9)
    assert settler.tick() == 0
    clock.advance(0.2)
    assert settler.tick() == 1
    row = ledger.rows()[0]
    assert row.state == "queued" and row.size == 3


def test_writer_that_reopens_restarts_the_quiet_time(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    folder = make_folder(tmp_path, settle_seconds=2.0)
    path = folder.path / "slow.bin"
    path.write_bytes(b"a")
    scanner.scan_folder(ledger, folder)
    settler = _settler(ledger, folder, clock)
    root = os.fspath(folder.path)
    for i in range(5):
        settler.tick()
        clock.advance(1.5)
        with open(path, "ab") as f:  # close, reopen, append
            f.write(b"b" * (i + 1))
        ledger.observe(root, ["slow.bin"], destination="dest")  # the watcher's close-write event
        settler.tick()
        assert ledger.rows()[0].state == "settling"
    clock.advance(2.1)
    settler.tick()
    row = ledger.rows()[0]
    assert row.state == "queued" and row.size == path.stat().st_size


def test_a_change_no_event_reported_is_found_at_the_next_due_look(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """Rows are looked at when due, not on every tick; a write that no event reported
    (a lost inotify event, a network share) is found then and restarts the quiet time."""
    folder = make_folder(tmp_path, settle_seconds=2.0)
    path = folder.path / "quiet.bin"
    path.write_bytes(b"a")
    scanner.scan_folder(ledger, folder)
    settler = _settler(ledger, folder, clock)
    settler.tick()  # first look; due again in 2 s
    clock.advance(1.0)
    path.write_bytes(b"ab")  # no event
    assert settler.tick() == 0
    assert ledger.rows()[0].size == 1  # not due: not looked at
    clock.advance(1.1)
    assert settler.tick() == 0  # due: the change is seen, the quiet time restarts
    assert ledger.rows()[0].size == 2
    clock.advance(1.9)
    assert settler.tick() == 0
    clock.advance(0.2)
    assert settler.tick() == 1


def test_a_backlog_is_judged_in_bounded_batches(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd import settle

    monkeypatch.setattr(settle, "BATCH", 50)
    folder = _scanned(tmp_path, ledger, 120)
    settler = _settler(ledger, folder, clock)
    assert settler.tick() == 50 and settler.more
    assert settler.tick() == 50 and settler.more
    assert settler.tick() == 20 and not settler.more
    assert ledger.counts()["queued"] == 120


def test_file_gone_while_settling(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder = make_folder(tmp_path)
    (folder.path / "seen.txt").write_bytes(b"x")
    (folder.path / "never.txt").write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    (folder.path / "never.txt").unlink()  # gone before the first stat: forgotten
    settler = _settler(ledger, folder, clock)
    settler.tick()
    (folder.path / "seen.txt").unlink()
    clock.advance(folder.settle_seconds)  # its next look is due (no event told of the unlink)
    settler.tick()
    rows = ledger.rows()
    assert [(r.relpath, r.state) for r in rows] == [("seen.txt", "vanished")]


def test_special_files_are_never_ledgered(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path)
    os.symlink("/etc/passwd", folder.path / "link")
    os.symlink("/", folder.path / "rootlink")
    os.mkfifo(folder.path / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder.path / "sock"))
    seen: list[str] = []
    assert scanner.scan_folder(ledger, folder, on_special=lambda r, m: seen.append(r)) == 0
    assert sorted(seen) == ["link", "pipe", "rootlink", "sock"]
    # the same via an event: the settle stage skips it with a log line
    ledger.observe(os.fspath(folder.path), ["pipe"], destination="dest")
    settler = _settler(ledger, folder, clock)
    settler.tick()
    settler.tick()
    assert ledger.rows() == []
    assert sum("FIFO" in r.message for r in caplog.records) == 1
    sock.close()


def test_special_files_come_and_go_without_growing_memory(
    tmp_path: Path,
    ledger: Ledger,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer that keeps making symlinks (or FIFOs) under new names and removing
    them: each was remembered for the rest of the run (to be logged once), so the
    daemon's memory grew with every name ever made. Those gone are forgotten once many
    are remembered; one still there is still said once."""
    from syncd import skipped

    monkeypatch.setattr(skipped, "SKIPPED_MEMORY", 100)  # 10,000 in the daemon
    folder = make_folder(tmp_path)
    settler = _settler(ledger, folder, clock)
    os.symlink("/", folder.path / "stays")
    for i in range(30):
        names = [f"l{i}-{j}" for j in range(10)]
        for name in names:
            os.symlink("/etc/passwd", folder.path / name)
        if i == 0:
            names.append("stays")
        ledger.observe(os.fspath(folder.path), names, destination="dest")
        while settler.tick() or settler.more:
            pass
        for name in names:
            if name != "stays":
                os.unlink(folder.path / name)
    assert len(settler.skipped) <= 100 + 10  # 301 paths were said
    ledger.observe(os.fspath(folder.path), ["stays"], destination="dest")
    settler.tick()
    assert sum("'stays'" in r.getMessage() or "/stays'" in r.getMessage() for r in caplog.records) == 1


def test_scan_skips_junk_excluded_and_own_dirs(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path, exclude=("drafts",), archive_dir=tmp_path / "inbox" / "done")
    for rel in [
        "a.pdf",
        "sub/b.pdf",
        ".hidden",
        "c.part",
        "drafts/d.pdf",
        "done/e.pdf",
        ".git/f",
        "sub/deeper/g.txt",
    ]:
        p = folder.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    assert sorted(r.relpath for r in ledger.rows()) == ["a.pdf", "sub/b.pdf", "sub/deeper/g.txt"]


def test_non_recursive_folder(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path, recursive=False)
    (folder.path / "sub").mkdir()
    (folder.path / "sub" / "b.txt").write_bytes(b"x")
    (folder.path / "a.txt").write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    assert [r.relpath for r in ledger.rows()] == ["a.txt"]


def test_kept_files_are_not_new_versions(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder = make_folder(tmp_path, after_upload="keep", settle_seconds=0)
    path = folder.path / "a.txt"
    path.write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    settler = _settler(ledger, folder, clock)
    settler.tick()
    settler.tick()
    row = ledger.claim_next()
    assert row is not None
    ledger.mark_uploaded(row.id, sha256="0" * 64, receipt={})
    ledger.mark_done(row.id)
    assert scanner.scan_folder(ledger, folder) == 0  # same version: ignored by scans
    ledger.observe(os.fspath(folder.path), ["a.txt"], destination="dest")  # an event
    settler.tick()
    clock.advance(1)
    settler.tick()
    assert ledger.counts()["settling"] == 0 and ledger.counts()["queued"] == 0
    path.write_bytes(b"changed")  # a real new version
    assert scanner.scan_folder(ledger, folder) == 1


def test_max_settle_forces_a_never_quiet_file(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder = make_folder(tmp_path, settle_seconds=5, max_settle_seconds=30)
    path = folder.path / "log.txt"
    path.write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    settler = _settler(ledger, folder, clock)
    for _ in range(10):
        settler.tick()
        with open(path, "ab") as f:
            f.write(b"more")
        clock.advance(4)
    assert ledger.rows()[0].state == "queued"


@pytest.mark.parametrize("max_settle", [0, 30])
def test_a_quiet_file_held_open_for_writing_waits_at_most_max_settle(
    tmp_path: Path,
    ledger: Ledger,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    max_settle: float,
) -> None:
    monkeypatch.setattr(writers, "_enabled", True)  # the probe, without touching SIGIO
    caplog.set_level(logging.INFO, "syncd.settle")
    folder = make_folder(tmp_path, settle_seconds=5, max_settle_seconds=max_settle)
    path = folder.path / "scan.pdf"
    with open(path, "wb") as f:  # the writer stalls with the file open
        f.write(b"page 1")
        f.flush()
        scanner.scan_folder(ledger, folder)
        settler = _settler(ledger, folder, clock)
        for _ in range(12):
            settler.tick()
            clock.advance(6)  # each look finds it quiet
        state = ledger.rows()[0].state
        if max_settle:
            assert state == "queued"
            anyway = [m for m in caplog.messages if "still open for writing after" in m and "anyway" in m]
            assert len(anyway) == 1, caplog.messages
        else:
            assert state == "settling"
            held = [m for m in caplog.messages if "still open for writing by a process" in m]
            assert len(held) == 1, caplog.messages  # said once, not at every look
    if not max_settle:
        clock.advance(6)
        settler.tick()
        assert ledger.rows()[0].state == "queued"  # closed: finished


def test_rules_applied_again_at_settle(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder = make_folder(tmp_path, include=("*.pdf",))
    (folder.path / "a.txt").write_bytes(b"x")
    ledger.observe(os.fspath(folder.path), ["a.txt"], destination="dest")
    _settler(ledger, folder, clock).tick()
    assert ledger.rows() == []


def test_one_tick_promotes_in_one_transaction_per_wake_and_wakes_the_workers(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd import settle

    monkeypatch.setattr(settle, "WAKE_EVERY", 4)
    folder = _scanned(tmp_path, ledger, 10)
    batches: list[int] = []
    real = ledger.promote_many
    monkeypatch.setattr(ledger, "promote_many", lambda rows: (batches.append(len(rows)), real(rows)))
    woken: list[int] = []
    settler = Settler(
        ledger,
        lambda: {os.fspath(folder.path): folder},
        clock=clock,
        on_queued=lambda: woken.append(ledger.counts().get("queued", 0)),
    )
    assert settler.tick() == 10
    assert [n for n in batches if n] == [4, 4, 2]
    assert woken == [4, 8, 10]  # each wake-up finds the rows before it committed


def _two_names_ticked(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> Settler:
    """A folder holding one file under two names (a.bin, b.bin), scanned and judged once."""
    folder = make_folder(tmp_path, settle_seconds=0.0)
    (folder.path / "a.bin").write_bytes(b"same bytes")
    os.link(folder.path / "a.bin", folder.path / "b.bin")
    scanner.scan_folder(ledger, folder)
    settler = _settler(ledger, folder, clock)
    assert settler.tick() == 1
    return settler


def test_two_names_of_one_file_in_one_tick_queue_only_one(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """Promotions are written at the end of the batch, so the second name of a hard-linked
    file must see the first in the batch, not only in the ledger."""
    _two_names_ticked(tmp_path, ledger, clock)
    states = sorted(r.state for r in ledger.rows())
    assert states == ["queued", "settling"]


def test_the_second_name_of_a_file_goes_as_soon_as_the_first_names_upload_is_over(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """A hard link waits while the other name of its file is being sent; it then waited for
    the settle stage's next look, a second later (20 hard links took 20 s). The worker's
    word that it is done with the first name makes the second due at once."""
    settler = _two_names_ticked(tmp_path, ledger, clock)
    first = next(r for r in ledger.rows() if r.state == "queued")
    clock.advance(0.1)
    assert settler.tick() == 0  # still behind the first name, due again in a second
    claimed = ledger.claim_next([first.destination])
    assert claimed is not None and claimed.id == first.id
    ledger.mark_uploaded(first.id, sha256="0" * 64, receipt={"remote_id": "x"})
    ledger.mark_done(first.id)
    clock.advance(0.1)
    assert settler.tick() == 0  # not told: nothing is due before the next look
    assert settler.same_file.over(first.folder, first.inode)  # the worker's word
    assert settler.tick() == 1
    assert sorted(r.state for r in ledger.rows()) == ["done", "queued"]


def test_rows_of_a_folder_that_is_away_wait_for_its_return(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """A folder that left the config or is unmounted: its settling rows are looked at once,
    then not again every second (5,000 of them each second kept the main loop busy); on
    its return they are all due at once."""
    folder = _scanned(tmp_path, ledger, 5000)
    here: dict[str, FolderConfig] = {}
    settler = Settler(ledger, lambda: here, clock=clock)
    ticks = 1
    settler.tick()
    while settler.more:
        settler.tick()
        ticks += 1
    assert ticks == 3  # 5,000 rows in batches of 2,000, each looked at once
    clock.advance(60)
    assert ledger.settling_due(clock(), 10) == []
    here[os.fspath(folder.path)] = folder  # back (a reload, or the share mounted again)
    queued = settler.tick()
    while settler.more:
        queued += settler.tick()
    assert queued == 5000


def test_files_that_cannot_be_looked_at_make_one_line_a_tick(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A dead disk fails every lstat: one warning for the tick, not one per file, and each
    file is looked at again after ERROR_LOOK seconds, not every second."""
    import errno

    from syncd import safefs, settle

    folder = _scanned(tmp_path, ledger, 50)

    def dead(*_: Any) -> os.stat_result:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safefs, "lstat", dead)
    settler = _settler(ledger, folder, clock)
    with caplog.at_level("WARNING", logger="syncd.settle"):
        assert settler.tick() == 0
    lines = [r.getMessage() for r in caplog.records if "cannot check" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("cannot check 50 settling file(s) (")
    assert "Input/output error, and 49 more); looking again in 10s" in lines[0]
    clock.advance(settle.ERROR_LOOK - 1)
    assert ledger.settling_due(clock(), 10) == []
    clock.advance(1.5)
    assert len(ledger.settling_due(clock(), 100)) == 50


def test_folder_back_wakes_only_what_waited_for_the_folder(ledger: Ledger, clock: FakeClock) -> None:
    """Uploads put off because their folder was away are due at once on its return; a
    retry of the same folder for another reason keeps its backoff."""
    rows = {}
    for name, reason in (("away.txt", "folder unavailable: folder missing"), ("503.txt", "HTTP 503")):
        ledger.observe("/in", [name], destination="d")
        row = ledger.active_for_path("/in", name)
        assert row is not None
        ledger.promote(row.id)
        assert ledger.claim_next() is not None
        ledger.mark_retry(row.id, error=reason, at=clock() + 300)
        rows[name] = row.id
    assert ledger.folder_back("/elsewhere") == 0
    assert ledger.folder_back("/in") == 1
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == rows["away.txt"]
    assert ledger.claim_next() is None


def _intake_stage(ledger: Ledger, folder: Any, settler: Settler) -> Any:
    """The intake stage of one folder, nothing else of the daemon around it."""
    import threading

    from syncd.backpressure import DiskFull
    from syncd.events import Intake
    from syncd.intake import IntakeStage
    from syncd.liveness import Liveness
    from syncd.metrics import Metrics

    root = os.fspath(folder.path)
    return IntakeStage(
        ledger,
        Intake(),
        settler,
        folders=lambda: {root: folder},
        folder_problem=lambda r: None,
        disk_full=DiskFull(None),
        metrics=Metrics(),
        liveness=Liveness(),
        nudge=threading.Event(),
    )


def test_scan_requests_that_a_queued_one_covers_are_not_queued_again(tmp_path: Path) -> None:
    """A burst of new directories, or periodic scans while a long scan runs, queued one
    scan each, every one reading the folder's rows again."""

    from syncd.settle import Settler

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    stage = _intake_stage(ledger, folder, Settler(ledger, lambda: {root: folder}))
    for _ in range(3):
        stage.request_scan(root, "new")
        stage.request_scan(root)
        stage.request_scan(root, "other", reason="directory")  # the whole folder is queued
    assert stage._queue.qsize() == 2  # (root, "new") and (root, "")
    (folder.path / "new").mkdir()
    (folder.path / "new" / "a.txt").write_bytes(b"x")
    stage.start_scanner()
    deadline = time.monotonic() + 10
    while stage.scans_pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not stage.scans_pending() and [r.relpath for r in ledger.rows()] == ["new/a.txt"]
    stage.request_scan(root)  # begun and done: asked again, scanned again
    assert stage._queue.qsize() == 1
    stage.stop_scanner()
    ledger.close()


def test_a_new_file_does_not_wait_behind_a_deleted_queued_file_whose_inode_it_got(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A queued file is deleted and a new one gets its inode: the new one waited until the
    old row was claimed (behind the whole queue, or a retry's backoff) and found gone."""
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, settle_seconds=1.0)
    root = os.fspath(folder.path)
    settler = Settler(ledger, lambda: {root: folder}, clock=clock)
    (folder.path / "a.pdf").write_text("A")
    scanner.scan_folder(ledger, folder)
    for _ in range(3):
        clock.advance(1.1)
        settler.tick()
    (folder.path / "a.pdf").unlink()
    (folder.path / "b.pdf").write_text("B")
    with ledger._lock:  # a.pdf's inode is b.pdf's now, as ext4 often has it (not left to luck)
        ledger._conn.execute("UPDATE files SET inode = ?", ((folder.path / "b.pdf").stat().st_ino,))
    scanner.scan_folder(ledger, folder)
    for _ in range(3):
        clock.advance(1.1)
        settler.tick()
    b = ledger.active_for_path(root, "b.pdf")
    assert b is not None and b.state == "queued"
    ledger.close()


def test_a_file_renamed_twice_waits_for_its_upload_in_flight_whatever_older_rows_say(
    tmp_path: Path, clock: FakeClock
) -> None:
    """a.pdf waits out a retry backoff and is renamed b.pdf (a row that need not wait for
    the stale one), whose upload is then in flight when it is renamed c.pdf: c.pdf must
    wait for that upload, though the oldest row of the inode (a.pdf's) stands for nothing."""
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, settle_seconds=1.0)
    root = os.fspath(folder.path)
    settler = Settler(ledger, lambda: {root: folder}, clock=clock)

    def settle(name: str) -> str:
        scanner.scan_folder(ledger, folder)
        for _ in range(3):
            clock.advance(1.1)
            settler.tick()
        row = ledger.active_for_path(root, name)
        assert row is not None
        return row.state

    (folder.path / "a.pdf").write_text("A" * 100)
    assert settle("a.pdf") == "queued"
    a = ledger.claim_next()
    assert a is not None
    ledger.mark_retry(a.id, error="HTTP 503", at=clock() + 600)
    os.rename(folder.path / "a.pdf", folder.path / "b.pdf")
    assert settle("b.pdf") == "queued"
    b = ledger.claim_next()
    assert b is not None and b.relpath == "b.pdf"  # uploading now
    os.rename(folder.path / "b.pdf", folder.path / "c.pdf")
    assert settle("c.pdf") == "settling"
    ledger.close()


def test_a_scan_cut_short_by_a_descriptor_shortage_is_done_again_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """syncd out of file descriptors (EMFILE) when a scan opened the folder: the walk
    logged "cannot list" and skipped the folder, and the scan counted as done, so the
    files dropped while syncd was down waited for the periodic rescan (5 minutes by
    default) with nothing in STATUS. The scan is now asked again in seconds, and the
    shortage is said once and shown (syncd/limits.py)."""
    import errno

    from syncd import intake, safefs
    from syncd.settle import Settler

    monkeypatch.setattr(intake, "SHORT_RETRY", 0.05, raising=False)
    real_open_root = safefs.open_root
    refused = []

    def short_open_root(root: Any, *args: Any, **kwargs: Any) -> int:
        if len(refused) < 3:
            refused.append(root)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open_root(root, *args, **kwargs)

    monkeypatch.setattr(safefs, "open_root", short_open_root)
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    (folder.path / "a.txt").write_bytes(b"dropped while syncd was down")
    settler = Settler(ledger, lambda: {root: folder})
    stage = _intake_stage(ledger, folder, settler)
    stage.request_scan(root, reason="startup")
    stage.start_scanner()
    deadline = time.monotonic() + 10
    while (stage.scans_pending() or not ledger.rows()) and time.monotonic() < deadline:
        time.sleep(0.01)
    stage.stop_scanner()
    assert [r.relpath for r in ledger.rows()] == ["a.txt"]
    assert len(refused) == 3
    assert any(line.startswith("out of file descriptors") for line in settler.shortages.describe())
    said = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(said) == 1 and "cannot list" not in caplog.text
    ledger.close()


def test_a_file_held_open_for_writing_is_not_queued_when_syncd_cannot_open_it_to_ask(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at whether a quiet file is still open for writing opens it. Out of file
    descriptors (EMFILE) for that, the answer was "cannot tell", taken for "not held":
    a file its writer had paused on was queued and uploaded half-written (and again once
    the writer went on). The file now stays settling, looked at again shortly, and the
    shortage is said once."""
    import errno

    from syncd import safefs

    monkeypatch.setattr(writers, "_enabled", True)  # the probe, without touching SIGIO
    folder = make_folder(tmp_path, settle_seconds=5)
    path = folder.path / "scan.pdf"
    real_open = safefs.open_file
    short = [True]

    def open_short(root: Any, rel: str, *args: Any, **kwargs: Any) -> int:
        if short[0]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(root, rel, *args, **kwargs)

    with open(path, "wb") as f:  # the writer stalls with the file open
        f.write(b"page 1")
        f.flush()
        scanner.scan_folder(ledger, folder)
        settler = _settler(ledger, folder, clock)
        monkeypatch.setattr(writers.safefs, "open_file", open_short)
        for _ in range(4):
            settler.tick()
            clock.advance(6)  # each look finds it quiet
        assert ledger.rows()[0].state == "settling"
        assert any(p.startswith("out of file descriptors") for p in settler.shortages.describe())
        short[0] = False
        settler.tick()
        assert ledger.rows()[0].state == "settling"  # the kernel says: still held
    clock.advance(6)
    settler.tick()
    assert ledger.rows()[0].state == "queued"


def test_a_row_of_the_same_inode_is_not_taken_for_gone_when_syncd_cannot_look_at_it(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new name of a file waits behind the queued row of its old name while that name
    still leads to the file. Out of file descriptors to look at the old name, the answer was
    "it no longer does": the new name went ahead, and the file was uploaded twice. The
    shortage now propagates (the settle tick notes it and looks again shortly)."""
    import errno

    from syncd import safefs, same_file

    folder = make_folder(tmp_path)
    (folder.path / "a.txt").write_bytes(b"x")
    scanner.scan_folder(ledger, folder)
    row = ledger.active_for_path(str(folder.path), "a.txt")
    assert row is not None
    ledger.promote(row.id)
    queued = ledger.get(row.id)
    assert queued is not None and queued.state == "queued"

    def short(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(safefs, "lstat", short)
    with pytest.raises(OSError) as info:
        same_file.stands_for_its_file(queued)
    assert info.value.errno == errno.EMFILE


def test_what_is_remembered_of_rows_waiting_for_another_name_is_bounded() -> None:
    from syncd.same_file import InodeWaits

    waits = InodeWaits(limit=3)
    for inode in range(10):
        waits.note("/in", inode, inode)
    assert len(waits._waiting) <= 3
    assert waits.over("/in", 9) and waits.due() == [9]
    assert not waits.over("/in", None)
