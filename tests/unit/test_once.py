"""When `syncd once` stops (syncd/once.py), on a real ledger: what it waits for and
what it leaves for the next run."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from syncd import once
from syncd.backpressure import DiskFull
from syncd.circuit import CircuitState
from syncd.ledger import Ledger
from tests.conftest import FakeClock, make_folder, queue_file

UP = {"dest": CircuitState()}


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    led = Ledger.open(tmp_path / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def test_a_retry_soon_is_waited_for_and_a_distant_one_left(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path)
    folders = {os.fspath(folder.path): folder}
    assert once.left_for_next_run(ledger, UP, folders, clock) == 0  # nothing at all: done
    row = queue_file(ledger, folder, "a.txt", b"a")
    assert once.left_for_next_run(ledger, UP, folders, clock) is None  # queued: wait
    assert ledger.claim_next(["dest"]).id == row  # type: ignore[union-attr]
    ledger.mark_retry(row, error="HTTP 503", at=clock() + once.RETRY_WAIT)
    assert once.left_for_next_run(ledger, UP, folders, clock) is None  # due within a minute
    ledger._conn.execute(
        "UPDATE files SET next_attempt_at = ? WHERE id = ?", (clock() + once.RETRY_WAIT + 1, row)
    )
    caplog.set_level(logging.WARNING, logger="syncd.daemon")
    assert once.left_for_next_run(ledger, UP, folders, clock) == 1
    assert "1 file(s) wait for a retry, the first at " in caplog.text
    other = queue_file(ledger, folder, "b.txt", b"b")
    assert once.left_for_next_run(ledger, UP, folders, clock) is None  # b.txt can go now
    ledger.mark_done(ledger.claim_next(["dest"]).id)  # type: ignore[union-attr]  # b.txt
    assert ledger.get(other).state == "done"
    assert once.left_for_next_run(ledger, UP, folders, clock) == 1


def test_a_destination_down_or_long_rate_limited_is_not_waited_out(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    folder = make_folder(tmp_path)
    folders = {os.fspath(folder.path): folder}
    queue_file(ledger, folder, "a.txt", b"a")
    queue_file(ledger, folder, "b.txt", b"b")
    down = {"dest": CircuitState("down", since=clock(), reason="refused", next_probe_at=clock() + 1)}
    assert once.left_for_next_run(ledger, down, folders, clock) == 2
    soon = {"dest": CircuitState("rate_limited", since=clock(), reason="429", next_probe_at=clock() + 30)}
    assert once.left_for_next_run(ledger, soon, folders, clock) is None  # a short hold: waited
    later = {"dest": CircuitState("rate_limited", since=clock(), reason="429", next_probe_at=clock() + 300)}
    assert once.left_for_next_run(ledger, later, folders, clock) == 2
    ledger.claim_next(["dest"])  # one in flight: `once` waits for it, whatever the circuit
    assert once.left_for_next_run(ledger, down, folders, clock) is None


def test_a_full_ledger_leaves_everything_for_the_next_run(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A full ledger pauses the uploads: `once` waited for them for ever (a cron job
    holding the lock)."""
    folder = make_folder(tmp_path)
    folders = {os.fspath(folder.path): folder}
    queue_file(ledger, folder, "a.txt", b"a")
    assert once.left_for_next_run(ledger, UP, folders, clock) is None
    caplog.set_level(logging.WARNING, logger="syncd.daemon")
    full = DiskFull()
    full.note("ledger", OSError(errno.ENOSPC, "database or disk is full"))
    assert once.left_for_next_run(ledger, UP, folders, clock, disk_full=full) == 1
    assert (
        "the disk is full (ledger: database or disk is full): 1 file(s) wait for the next run" in caplog.text
    )


def test_a_full_archive_leaves_only_its_folders_uploaded_files(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive too small for an uploaded file holds that folder's uploaded files, and
    nothing else: `once` goes on uploading (that folder's queued files too) and leaves
    the uploaded ones in their inbox for the next run to archive."""
    full_folder, other = make_folder(tmp_path, "full"), make_folder(tmp_path, "other")
    folders = {os.fspath(f.path): f for f in (full_folder, other)}
    uploaded = queue_file(ledger, full_folder, "a.txt", b"a")
    assert ledger.claim_next(["dest"]).id == uploaded  # type: ignore[union-attr]
    ledger.mark_uploaded(uploaded, sha256="ab" * 32, receipt={"remote_id": "r"})
    full = DiskFull()
    full.note("archive", OSError(errno.ENOSPC, "No space left on device"), full_folder.archive_dir)
    assert not full.paused  # workers go on claiming
    queued = queue_file(ledger, other, "b.txt", b"b")
    assert once.left_for_next_run(ledger, UP, folders, clock, disk_full=full) is None  # b.txt goes
    assert ledger.claim_next(["dest"]).id == queued  # type: ignore[union-attr]
    ledger.mark_uploaded(queued, sha256="cd" * 32, receipt={"remote_id": "s"})
    assert once.left_for_next_run(ledger, UP, folders, clock, disk_full=full) is None  # b: archivable
    ledger.mark_done(queued)
    caplog.set_level(logging.WARNING, logger="syncd.daemon")
    assert once.left_for_next_run(ledger, UP, folders, clock, disk_full=full) == 1
    assert (
        f"an archive folder is full ({full_folder.archive_dir}: No space left on device): 1 uploaded "
        "file(s) stay in the inbox and are archived by the next run" in caplog.text
    )
    assert full.describe() == [
        f"archive full ({full_folder.archive_dir}: No space left on device): uploaded files wait in the inbox"
    ]


def test_an_uploaded_file_still_open_for_writing_is_left_for_the_next_run(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A process opened the file for writing after it settled: it stays uploaded in the
    inbox until closed (syncd/moves.py StillOpen). `once` waited for it for ever."""
    folder = make_folder(tmp_path)
    folders = {os.fspath(folder.path): folder}
    row = queue_file(ledger, folder, "a.txt", b"a")
    assert ledger.claim_next(["dest"]).id == row  # type: ignore[union-attr]
    ledger.mark_uploaded(row, sha256="ab" * 32, receipt={"remote_id": "r"})
    assert once.left_for_next_run(ledger, UP, folders, clock) is None  # an archive move to wait for
    caplog.set_level(logging.WARNING, logger="syncd.daemon")
    held = {os.fspath(folder.path): 1}
    assert once.left_for_next_run(ledger, UP, folders, clock, held_open=held) == 1
    assert "1 uploaded file(s) are still open for writing by a process" in caplog.text
