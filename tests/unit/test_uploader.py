from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syncd.circuit import OPEN_QUIET, THRESHOLD
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.errors import FatalError, PermanentError, RetryableError, describe
from syncd.ledger import Ledger
from syncd.liveness import Liveness
from syncd.retry_policy import backoff
from syncd.uploader import IDLE_WAIT, Uploader
from tests.conftest import FakeClock, make_folder, queue_file
from tests.harness import wait_until


class FakeDestination:
    TYPE: ClassVar[str] = "fake"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels="x", category="y")
    Options: ClassVar[type] = object

    def __init__(self) -> None:
        self.name = "dest"
        self.script: list[Any] = []  # exceptions to raise, or callables(source) run first
        self.received: list[tuple[UploadItem, bytes]] = []
        self.aborted: list[dict[str, Any]] = []
        self.down: Exception | None = None  # raised by every upload and probe (an outage)
        self.fail_names: dict[str, Exception] = {}  # raised for these file names, every time
        self.calls = 0
        self.attempted: list[str] = []
        self.resumed: list[dict[str, Any] | None] = []  # the resume state each upload got
        self.probes = 0

    def upload(
        self, item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        self.calls += 1
        self.attempted.append(item.name)
        self.resumed.append(resume)
        if self.down is not None:
            raise self.down
        if item.name in self.fail_names:
            raise self.fail_names[item.name]
        checkpoint({"v": 1, "session": "s1"})
        action = self.script.pop(0) if self.script else None
        if callable(action) and not isinstance(action, Exception):
            action(source)
        data = source.read(0, item.size)
        if isinstance(action, Exception):
            raise action
        self.received.append((item, data))
        return Receipt(remote_id=f"obj/{item.name}", url="http://x/obj")

    def abort(self, resume: dict[str, Any]) -> None:
        self.aborted.append(resume)

    def probe(self) -> str:
        self.probes += 1
        if self.down is not None:
            raise self.down
        return "ok"

    def close(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path, clock: FakeClock) -> Any:
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, labels=("a", "b"), category="SOURCE", max_attempts=3)
    dest = FakeDestination()
    up = Uploader(
        ledger,
        lambda: {"dest": dest},
        lambda: {os.fspath(folder.path): folder},
        retry_base=1.0,
        retry_max=30.0,
        clock=clock,
        rng=random.Random(1),
    )
    up.circuit("dest")  # made, then OPEN_QUIET passes: failures in a row open it at once
    clock.advance(OPEN_QUIET)

    def drop(rel: str, data: bytes = b"payload") -> int:
        return queue_file(ledger, folder, rel, data)

    def step() -> str:
        row = ledger.claim_next(["dest"])
        assert row is not None
        return up.process(row)

    yield ledger, folder, dest, up, drop, step
    ledger.close()


def test_success_uploads_records_and_archives(setup: Any, tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("sub/a.pdf", b"pdf bytes")
    assert step() == "done"
    item, data = dest.received[0]
    assert data == b"pdf bytes"
    assert (item.name, item.relpath, item.content_type) == ("a.pdf", "sub/a.pdf", "application/pdf")
    assert item.labels == ("a", "b") and item.category == "SOURCE"
    row = ledger.get(row_id)
    assert row.state == "done" and row.sha256 == hashlib.sha256(b"pdf bytes").hexdigest()
    assert row.receipt == {"remote_id": "obj/a.pdf", "url": "http://x/obj"}
    assert (tmp_path / "archive" / "inbox" / "sub" / "a.pdf").read_bytes() == b"pdf bytes"
    assert up.stats.uploaded == 1


def test_retryable_backs_off_then_fails_after_max_attempts(
    setup: Any, clock: FakeClock, tmp_path: Path
) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    dest.script = [
        RetryableError("HTTP 503"),
        RetryableError("HTTP 503", retry_after=7),
        RetryableError("HTTP 503"),
    ]
    assert step() == "retrying"
    row = ledger.get(row_id)
    assert row.state == "retrying" and "503" in row.last_error
    assert 0 < row.next_attempt_at - clock() <= 1.0
    assert ledger.claim_next(["dest"]) is None  # not due yet
    clock.advance(1.0)
    assert step() == "retrying"
    assert ledger.get(row_id).next_attempt_at - clock() == pytest.approx(7)
    assert dest.aborted == []  # a retry resumes what the service has
    clock.advance(7)
    assert step() == "failed"
    failed = ledger.get(row_id)
    assert failed.state == "failed" and "gave up after 3 attempts" in failed.last_error
    assert dest.aborted == [{"v": 1, "session": "s1"}]  # failed for good: the service may drop it
    assert (tmp_path / "failed" / "inbox" / "a.txt").exists()
    assert not (folder.path / "a.txt").exists()


def test_permanent_error_fails_at_once_and_aborts(setup: Any, tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    dest.script = [PermanentError("HTTP 400: bad type")]
    assert step() == "failed"
    assert dest.aborted == [{"v": 1, "session": "s1"}]
    assert ledger.get(row_id).attempts == 1
    assert (tmp_path / "failed" / "inbox" / "a.txt.error.json").exists()


def test_changed_during_upload_is_superseded(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"first")

    def append(source: Source) -> None:
        with open(folder.path / "a.txt", "ab") as f:
            f.write(b" and more")

    dest.script = [append]
    assert step() == "vanished"
    assert ledger.get(row_id).state == "vanished"
    new = ledger.active_for_path(os.fspath(folder.path), "a.txt")
    assert new is not None and new.state == "settling" and new.id != row_id
    assert (folder.path / "a.txt").exists()  # never archived
    assert dest.aborted


def test_replaced_by_symlink_is_not_followed(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    os.unlink(folder.path / "a.txt")
    os.symlink("/etc/passwd", folder.path / "a.txt")
    step()
    assert dest.received == []
    assert ledger.get(row_id).state == "vanished"


def test_vanished_before_upload(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    os.unlink(folder.path / "a.txt")
    assert step() == "vanished"
    assert ledger.get(row_id).state == "vanished"


def work(up: Uploader) -> str | None:
    """One turn of a worker: claim what the circuits let through, upload it, clean up."""
    row = up._claim()
    if row is None:
        return None
    state = "retrying"
    try:
        state = up.process(row)
    finally:
        up._attempt_over(row, state)
    return state


def test_fatal_error_pauses_destination_without_using_attempts(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    other = drop("b.txt")
    dest.script = [FatalError("HTTP 401: bad key")]
    assert work(up) == "queued"
    row = ledger.get(row_id)
    assert row.state == "queued" and row.attempts == 0
    state = up.destination_states()["dest"]
    assert state.state == "refused" and "HTTP 401" in (state.reason or "")
    assert work(up) is None  # b.txt waits too
    clock.advance(61)
    assert work(up) == "done"  # one probe; it works: the circuit closes
    assert up.destination_states()["dest"].state == "up"
    assert work(up) == "done"
    assert {ledger.get(row_id).state, ledger.get(other).state} == {"done"}


REFUSED = RetryableError("fake: initiate: ConnectError: [Errno 111] Connection refused", transport=True)


def test_a_refused_connection_spends_no_attempts_and_files_wait(
    setup: Any, clock: FakeClock, tmp_path: Path
) -> None:
    """max_attempts is 3: a long outage, seen by every file, fails none of them."""
    ledger, folder, dest, up, drop, step = setup
    ids = [drop(f"f{i}.txt", f"file {i}".encode()) for i in range(5)]
    dest.down = REFUSED
    outcomes = []
    while (state := work(up)) is not None:  # until the circuit hands out no more rows
        outcomes.append(state)
    assert outcomes == ["retrying"] * THRESHOLD  # three failures across files open it
    state = up.destination_states()["dest"]
    assert state.state == "down" and not state.up and "Connection refused" in (state.reason or "")
    assert all(ledger.get(i).attempts == 0 for i in ids)
    # due rows that wait for the circuit: no spinning, a sleep until its probe (retry_base 1 s)
    assert up._idle_wait() == min(IDLE_WAIT, 1.0)
    steps = []
    for _ in range(12):  # far more than max_attempts: one probe per step, growing
        wait = up.circuit("dest").wait()
        assert wait is not None
        steps.append(wait)
        clock.advance(wait)
        calls = dest.calls
        assert work(up) == "retrying"  # the probe: one real upload attempt
        assert dest.calls == calls + 1
        assert work(up) is None  # nobody else in this step
    assert steps == [1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 7  # retry_base 1 .. retry_max 30
    assert set(dest.attempted[THRESHOLD:]) == {f"f{i}.txt" for i in range(5)}  # probes rotate
    rows = [ledger.get(i) for i in ids]
    assert all(r.attempts == 0 and r.state in ("queued", "retrying") for r in rows), rows
    assert all("Connection refused" in (r.last_error or "") for r in rows if r.state == "retrying")
    assert not (tmp_path / "failed").exists()
    assert all((folder.path / f"f{i}.txt").exists() for i in range(5))
    assert up.stats.failed == 0


@pytest.mark.parametrize(
    "answer",
    [
        RetryableError("params: HTTP 522: origin timed out", status=522),  # a CDN in front
        RetryableError("params: HTTP 302, a redirect to 'http://portal/login'", status=302, garbled=True),
        RetryableError("params: the server returned a body that is not JSON: '<html>'", garbled=True),
    ],
)
def test_a_proxy_or_cdn_answering_for_the_service_fails_no_file(
    setup: Any, clock: FakeClock, tmp_path: Path, answer: RetryableError
) -> None:
    """max_attempts is 3: a CDN's 522, a captive portal's redirect to its login page or
    its HTML page in place of JSON, for every file: each file spent its attempts (a 522
    failed it for good at once), and every waiting file went to failed_dir."""
    ledger, folder, dest, up, drop, step = setup
    ids = [drop(f"f{i}.txt", f"file {i}".encode()) for i in range(5)]
    dest.down = answer
    while work(up) is not None:
        pass
    assert up.destination_states()["dest"].state == "down"
    for _ in range(6):
        clock.advance(up.circuit("dest").wait() or 0)
        assert work(up) == "retrying"  # the probe
    assert all(ledger.get(i).attempts == 0 for i in ids) and up.stats.failed == 0
    assert not (tmp_path / "failed").exists()


def test_a_recovered_destination_drains_everything(setup: Any, clock: FakeClock, tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    ids = [drop(f"f{i}.txt", f"file {i}".encode()) for i in range(6)]
    dest.down = REFUSED
    while work(up) is not None:
        pass
    for _ in range(4):  # some failed probes
        clock.advance(up.circuit("dest").wait() or 0)
        assert work(up) == "retrying"
    ids.append(drop("late.txt", b"arrived during the outage"))
    assert work(up) is None
    dest.down = None  # the service is back
    clock.advance(up.circuit("dest").wait() or 0)
    assert work(up) == "done"  # the probe gets through and closes the circuit
    assert up.destination_states()["dest"].state == "up"
    while work(up) is not None:  # everything queued flows again, no waiting
        pass
    rows = [ledger.get(i) for i in ids]
    assert [r.state for r in rows] == ["done"] * 7
    assert all(r.attempts <= 1 for r in rows)
    assert sorted(p.name for p in (tmp_path / "archive" / "inbox").iterdir()) == sorted(
        [f"f{i}.txt" for i in range(6)] + ["late.txt"]
    )


def test_a_file_in_flight_when_the_circuit_opens_keeps_its_attempt(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    row = up._claim()  # in flight...
    assert row is not None and row.attempts == 1
    for _ in range(THRESHOLD):  # ...while other workers see the service go down
        up.circuit("dest").failed(describe(REFUSED))
    dest.down = REFUSED
    state = up.process(row)
    up._attempt_over(row, state)
    assert state == "retrying"
    row = ledger.get(row_id)
    assert row.attempts == 0  # given back
    assert row.next_attempt_at == up.circuit("dest").snapshot().next_probe_at


def test_a_5xx_only_one_file_gets_is_that_files_failure(setup: Any, clock: FakeClock, tmp_path: Path) -> None:
    """The service works for other files while one keeps getting a 500: those failures
    spend its attempts (max_attempts 3) and it ends in failed_dir; the others flow."""
    ledger, folder, dest, up, drop, step = setup
    poison = drop("poison.bin", b"the server chokes on this")
    dest.fail_names["poison.bin"] = RetryableError("HTTP 500", status=500)
    for n in range(10):
        drop(f"ok{n}.txt", b"fine")
        while work(up) is not None:
            clock.advance(0.01)
        if ledger.get(poison).state == "failed":
            break
        clock.advance(30)
    row = ledger.get(poison)
    assert row.state == "failed" and "gave up after 3 attempts" in (row.last_error or "")
    assert (tmp_path / "failed" / "inbox" / "poison.bin").exists()
    assert up.destination_states()["dest"].state == "up"  # never mistaken for an outage
    assert ledger.counts()["done"] >= 3


def test_a_429_holds_the_destination_without_spending_attempts(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    other = drop("b.txt")
    dest.script = [RetryableError("HTTP 429", status=429, retry_after=7)]
    assert work(up) == "retrying"
    row = ledger.get(row_id)
    assert row.attempts == 0 and row.next_attempt_at == pytest.approx(clock() + 7, abs=1e-3)
    assert up.destination_states()["dest"].state == "rate_limited"
    assert work(up) is None  # b.txt is held back too
    clock.advance(7)
    assert work(up) == "done" and work(up) == "done"
    assert ledger.get(other).state == "done"


def test_a_429_waits_the_documented_time_whatever_retry_max_seconds(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    up.set_retry(1.0, 5.0)  # an operator's short retry_max_seconds
    row_id = drop("a.txt")
    dest.script = [RetryableError("HTTP 429", status=429, retry_after=60.0, min_wait=60.0)]
    assert work(up) == "retrying"
    row = ledger.get(row_id)
    assert row.attempts == 0 and row.next_attempt_at == pytest.approx(clock() + 60, abs=1e-3)
    clock.advance(5)
    assert work(up) is None  # the cap does not shorten the service's documented wait
    clock.advance(55)
    assert work(up) == "done"


def test_an_idle_open_circuit_asks_the_service_with_probe(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    for _ in range(THRESHOLD):
        up.circuit("dest").failed(describe(REFUSED))
    dest.down = REFUSED
    clock.advance(1.0)
    assert work(up) is None and dest.probes == 1  # nothing waits: Destination.probe()
    assert up.destination_states()["dest"].state == "down"
    assert work(up) is None and dest.probes == 1  # once per step
    assert up.circuit("dest").wait() == 2.0
    dest.down = None
    clock.advance(2.0)
    assert work(up) is None and dest.probes == 2
    assert up.destination_states()["dest"].state == "up"


def test_a_large_file_is_not_the_probe_the_service_is_asked(setup: Any, clock: FakeClock) -> None:
    """A file over PROBE_FILE_MAX next in line when a probe is due: Destination.probe()
    finds out whether the service is back, so a multi-gigabyte upload never holds the
    destination's other files back. While it is down the file waits without spending an
    attempt; once it is back the file goes as an ordinary upload and the rest follow."""
    from syncd.circuits import PROBE_FILE_MAX

    ledger, folder, dest, up, drop, step = setup
    big = drop("big.bin", b"x" * (PROBE_FILE_MAX + 1))
    for _ in range(THRESHOLD):
        up.circuit("dest").failed(describe(REFUSED))
    dest.down = REFUSED
    clock.advance(1.0)
    assert work(up) is None and dest.probes == 1 and dest.calls == 0  # no upload attempt
    row = ledger.get(big)
    assert row.state == "queued" and row.attempts == 0
    assert up.destination_states()["dest"].state == "down" and up.inflight_ids() == set()
    assert work(up) is None and dest.probes == 1  # once per step
    dest.down = None
    clock.advance(up.circuit("dest").wait() or 0)
    assert work(up) == "done" and dest.probes == 2  # asked, back: the big file goes
    assert up.destination_states()["dest"].state == "up"
    assert ledger.get(big).attempts == 1 and dest.attempted == ["big.bin"]
    small = drop("small.txt", b"small")  # a small file is a probe as before
    for _ in range(THRESHOLD):
        up.circuit("dest").failed(describe(REFUSED))
    clock.advance(up.circuit("dest").wait() or 0)
    assert work(up) == "done" and dest.probes == 2 and ledger.get(small).state == "done"


def test_unreadable_file_stays_and_is_retried_without_using_attempts(
    setup: Any, monkeypatch: pytest.MonkeyPatch, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Logic only; tests/daemon/test_e2e.py runs the real thing without capabilities. The delay
    grows like any retry's (retry_base 1 .. retry_max 30); the WARNING is said once per
    reason, the tries after it at debug level."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    import syncd.upload_one as upload_one_mod

    error = [PermissionError(13, "Permission denied")]

    def denied(*args: Any, **kwargs: Any) -> None:
        raise error[0]

    monkeypatch.setattr(upload_one_mod, "StoppableSource", denied)
    caplog.set_level("DEBUG", logger="syncd.uploader")
    delays = []
    for _ in range(10):  # more than max_attempts (3): never moved to failed
        clock.advance((ledger.get(row_id).next_attempt_at or clock()) - clock())
        assert work(up) == "retrying"
        delays.append(ledger.get(row_id).next_attempt_at - clock())
    row = ledger.get(row_id)
    assert row.state == "retrying" and row.attempts == 0
    assert "Permission denied" in row.last_error
    assert (folder.path / "a.txt").exists()
    for n, delay in enumerate(delays, start=1):  # full jitter under a growing ceiling
        assert 0 < delay <= min(30.0, 1.0 * 2 ** (n - 1))
    assert max(delays[5:]) > 4.0, delays  # it grew: not retry_base forever
    said = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"] + ["DEBUG"] * 9
    error[0] = PermissionError(1, "Operation not permitted")  # another reason: said again
    clock.advance(ledger.get(row_id).next_attempt_at - clock())
    assert work(up) == "retrying"
    said = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert said[-1].levelname == "WARNING" and "Operation not permitted" in said[-1].getMessage()


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(3)
    for attempt in range(1, 12):
        d = backoff(attempt, 2.0, 60.0, rng)
        assert 0 < d <= min(60.0, 2.0 * 2 ** (attempt - 1))
    assert backoff(1, 2.0, 60.0, rng, retry_after=5) == 5
    assert backoff(1, 2.0, 60.0, rng, retry_after=10_000) == 60.0


def _archive_fails(monkeypatch: pytest.MonkeyPatch, error: OSError) -> list[int]:
    """Every archive move raises ``error``; the ids of the rows tried, in order."""
    from syncd import archive

    calls: list[int] = []

    def fail(*args: Any, **kw: Any) -> None:
        calls.append(args[1].id)
        raise error

    monkeypatch.setattr(archive, "finish", fail)
    return calls


def test_a_folder_whose_archive_keeps_failing_is_tried_once_a_sweep(
    setup: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Archiving fails (a read-only archive folder): every file stays uploaded, the error is
    logged once, and each sweep tries one file of the folder, not all; once that one
    works, the others follow in the same sweep."""
    import errno

    from syncd import archive
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    real_finish = archive.finish
    calls = _archive_fails(monkeypatch, OSError(errno.EROFS, "Read-only file system"))
    for i in range(5):
        drop(f"f{i}.txt")
    with caplog.at_level("DEBUG", logger="syncd.uploader"):
        for _ in range(5):
            assert step() == "uploaded"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "could not archive" in r.getMessage()]
    assert len(errors) == 1
    root = os.fspath(folder.path)
    assert up.procedure.after.stuck.problems() == {root: "Read-only file system"}
    recovery = Recovery(ledger, lambda: {root: folder}, up)
    calls.clear()
    recovery.sweep()
    assert len(calls) == 1  # one try for the stuck folder
    monkeypatch.setattr(archive, "finish", real_finish)
    recovery.sweep()  # the file after the one tried last works: the folder goes on, all of it
    assert ledger.counts()["done"] == 5 and not up.procedure.after.stuck.problems()


def test_a_full_archive_holds_only_its_uploaded_files_and_is_tried_once_a_sweep(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive folder out of space: uploads go on (no pause), the files wait uploaded,
    the sweep tries one of them a pass; once the probe finds space, all are archived."""
    import errno

    from syncd import archive
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    real_finish = archive.finish
    calls = _archive_fails(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    for i in range(4):
        drop(f"f{i}.txt")
    for _ in range(4):
        assert step() == "uploaded"  # claimed and sent while the archive is full
    assert up.disk_full.archives == {os.fspath(folder.archive_dir)} and not up.disk_full.paused
    assert up.procedure.after.stuck.problems() == {}  # said as a full disk, not a stuck folder
    root = os.fspath(folder.path)
    recovery = Recovery(ledger, lambda: {root: folder}, up)
    calls.clear()
    recovery.sweep()
    assert len(calls) == 1  # one try for the full archive
    monkeypatch.setattr(archive, "finish", real_finish)
    up.disk_full.probe(ledger, {root: folder}, recovery.finish_uploaded, lambda root: None)
    assert not up.disk_full and not up.disk_full.archives
    recovery.sweep()
    assert ledger.counts()["done"] == 4


def test_an_archive_move_cut_short_by_a_stop_is_left_for_the_next_start_quietly(
    setup: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A stop during an archive copy (ECANCELED) is no archive problem: the file stays
    uploaded, the folder is not marked stuck, nothing is said at ERROR level."""
    import errno

    from syncd import archive

    ledger, folder, dest, up, drop, step = setup

    def cut_short(*args: Any, **kw: Any) -> None:
        assert kw["cancel"] is up._cancel
        up._cancel.set()
        raise OSError(errno.ECANCELED, "syncd is stopping")

    monkeypatch.setattr(archive, "finish", cut_short)
    drop("a.txt")
    with caplog.at_level("INFO", logger="syncd.uploader"):
        assert step() == "uploaded"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "the archive move of" in caplog.text and "is done at the next start" in caplog.text
    assert up.procedure.after.stuck.problems() == {} and not up.disk_full
    assert ledger.counts()["uploaded"] == 1


def _one_bad_archive(setup: Any, monkeypatch: pytest.MonkeyPatch, bad: int) -> Any:
    """Archiving fails for row ``bad`` alone (a reason of its own); the sweep's Recovery."""
    import errno

    from syncd import archive
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    real_finish = archive.finish

    def one_bad(ledger_: Any, row: Any, *args: Any, **kw: Any) -> None:
        if row.id == bad:
            raise OSError(errno.EACCES, "Permission denied")
        real_finish(ledger_, row, *args, **kw)

    monkeypatch.setattr(archive, "finish", one_bad)
    root = os.fspath(folder.path)
    return Recovery(ledger, lambda: {root: folder}, up)


def test_one_file_that_cannot_be_archived_holds_none_of_the_others_back(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first uploaded file fails to archive (a reason of its own): the sweep's try
    moves on to the next file each time, so the others are archived."""
    import errno

    from syncd import archive

    ledger, folder, dest, up, drop, step = setup
    bad = drop("bad.txt")
    monkeypatch.setattr(archive, "finish", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    for i in range(4):
        drop(f"f{i}.txt")
    for _ in range(5):
        assert step() == "uploaded"
    monkeypatch.undo()
    recovery = _one_bad_archive(setup, monkeypatch, bad)
    for _ in range(4):
        recovery.sweep()
    assert ledger.counts()["done"] == 4
    assert ledger.get(bad).state == "uploaded"


def test_a_file_that_keeps_failing_to_archive_is_said_once_while_others_flow(
    setup: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A busy folder with one file that cannot be archived: its error is said once, not at
    every sweep followed by "works again" when the next file of the folder gets through."""

    ledger, folder, dest, up, drop, step = setup
    bad = drop("bad.txt")
    recovery = _one_bad_archive(setup, monkeypatch, bad)
    with caplog.at_level("DEBUG", logger="syncd.uploader"):
        assert step() == "uploaded"
        for i in range(5):  # the sweep tries the bad file again while new files get through
            recovery.sweep()
            drop(f"f{i}.txt")
            assert step() == "done"
    said = [r for r in caplog.records if r.levelno >= logging.INFO and "archive" in r.getMessage()]
    # said once, and that the folder works again once another file got through; then quiet
    assert [r.levelname for r in said] == ["ERROR", "INFO"], [r.getMessage() for r in said]
    assert "works again" in said[1].getMessage()
    assert ledger.counts()["done"] == 5 and ledger.get(bad).state == "uploaded"


def test_uploaded_files_of_a_folder_that_is_away_wait_for_it_instead_of_vanishing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share unmounted before its uploaded files were archived (a crash, a stuck archive):
    the sweep and a worker find no file there, which says nothing of the file. Its row
    stays uploaded and is archived when the folder is back, not noted "vanished"."""
    import errno

    from syncd import archive
    from syncd.recovery import Recovery

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    problem: list[str | None] = [None]
    up = Uploader(
        ledger,
        lambda: {"dest": FakeDestination()},
        lambda: {root: folder},
        clock=clock,
        folder_problem=lambda r: problem[0],
    )
    row_id = queue_file(ledger, folder, "a.txt", b"scan")
    real_finish = archive.finish
    monkeypatch.setattr(archive, "finish", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    assert up.process(ledger.claim_next(["dest"])) == "uploaded"
    monkeypatch.setattr(archive, "finish", real_finish)
    hidden = tmp_path / "unmounted"
    folder.path.rename(hidden)  # the share goes away
    folder.path.mkdir()  # and leaves its empty mount point
    problem[0] = "not mounted"
    recovery = Recovery(ledger, lambda: {root: folder}, up)
    recovery.at_start()
    recovery.sweep()
    assert up.procedure.finish(ledger.get(row_id), folder) == "uploaded"  # a worker's try
    row = ledger.get(row_id)
    assert row.state == "uploaded" and "vanished" not in (row.last_error or "")
    folder.path.rmdir()
    hidden.rename(folder.path)  # mounted again
    problem[0] = None
    recovery.sweep()
    row = ledger.get(row_id)
    assert row.state == "done" and row.location is not None
    assert Path(row.location).read_bytes() == b"scan"
    ledger.close()


def test_the_sweep_leaves_alone_a_row_a_worker_claimed_after_the_sweep_began(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker archiving a row it claimed while the sweep was already paging through
    uploaded rows: the sweep must not archive it too (two archive entries, a false
    "now holds another file")."""
    import threading

    from syncd import moves
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    row_id = drop("x.txt")
    recovery = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    in_place, sweep_done = threading.Event(), threading.Event()
    real_place, real_rows = moves._place, ledger.rows

    def place(*args: Any, **kw: Any) -> None:
        if threading.current_thread().name == "worker":
            in_place.set()  # uploaded, in flight, about to link into the archive
            sweep_done.wait(10)
        real_place(*args, **kw)

    def worker() -> None:
        row = up._claim()
        assert row is not None
        up._attempt_over(row, up.process(row))

    thread = threading.Thread(target=worker, name="worker")

    def rows(*args: Any, **kw: Any) -> Any:  # the sweep has begun: now the worker claims
        if not thread.is_alive() and not in_place.is_set():
            thread.start()
            assert in_place.wait(10)
        return real_rows(*args, **kw)

    monkeypatch.setattr(moves, "_place", place)
    monkeypatch.setattr(ledger, "rows", rows)
    recovery.finish_uploaded()
    sweep_done.set()
    thread.join(10)
    assert sorted(os.listdir(tmp_path / "archive" / "inbox")) == ["x.txt"]
    row = ledger.get(row_id)
    assert row.state == "done" and row.location == os.fspath(tmp_path / "archive" / "inbox" / "x.txt")


@pytest.mark.parametrize("mended", [False, True])
def test_a_retried_failed_file_is_sent_as_it_is_now_in_failed_dir(
    setup: Any, tmp_path: Path, mended: bool
) -> None:
    """The move to failed_dir copied the file (a second hard link; also another file system,
    or a link the kernel refused), so it is another inode there; the operator may also mend
    it before `syncd retry`. Either way the retry uploads it, not "vanished"."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"rejected once")
    os.link(folder.path / "a.txt", tmp_path / "second-link")
    dest.script = [PermanentError("HTTP 400: bad type")]
    assert step() == "failed"
    copy = tmp_path / "failed" / "inbox" / "a.txt"
    assert copy.stat().st_ino != (tmp_path / "second-link").stat().st_ino  # a copy
    if mended:
        copy.write_bytes(b"mended by the operator")
    ledger.requeue_failed([row_id])
    assert step() == "done"
    sent = b"mended by the operator" if mended else b"rejected once"
    assert dest.received[-1][1] == sent
    row = ledger.get(row_id)
    assert Path(row.location).read_bytes() == sent and not copy.exists()


def test_a_retried_failed_file_the_operator_deleted_takes_its_error_json_along(
    setup: Any, tmp_path: Path
) -> None:
    """The operator deleted a file from failed_dir, then ran `syncd retry`: the row ends
    vanished, and the ``.error.json`` that said why the file failed went on describing a
    file no longer there, in failed_dir for good."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"rejected once")
    dest.script = [PermanentError("HTTP 400: bad type")]
    assert step() == "failed"
    copy = tmp_path / "failed" / "inbox" / "a.txt"
    sidecar = tmp_path / "failed" / "inbox" / "a.txt.error.json"
    assert sidecar.exists()
    copy.unlink()
    (tmp_path / "failed" / "inbox" / "b.txt.error.json").write_text("{}")  # not this row's
    ledger.requeue_failed([row_id])
    assert step() == "vanished"
    assert not sidecar.exists()
    assert (tmp_path / "failed" / "inbox" / "b.txt.error.json").exists()


def test_a_failed_move_whose_ledger_write_failed_is_finished_by_the_sweep(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is in failed_dir, then recording "failed" fails (a locked or full ledger):
    the row is left uploading with its failed target. The sweep must finish the failure,
    not requeue it (the next claim found no file in the inbox: "vanished", the file in
    failed_dir untracked)."""
    import sqlite3

    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"rejected")
    dest.script = [PermanentError("HTTP 400: bad type")]
    real = ledger.mark_failed

    def locked(*args: Any, **kw: Any) -> None:
        monkeypatch.setattr(ledger, "mark_failed", real)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger, "mark_failed", locked)
    with pytest.raises(sqlite3.OperationalError):
        step()
    row = ledger.get(row_id)
    assert row.state == "uploading" and row.archive_path is not None
    assert (tmp_path / "failed" / "inbox" / "a.txt").exists()
    Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up).sweep()
    row = ledger.get(row_id)
    assert row.state == "failed" and row.location == os.fspath(tmp_path / "failed" / "inbox" / "a.txt")
    assert "400" in row.last_error


@pytest.mark.parametrize("after_upload", ["archive", "delete"])
def test_a_new_file_that_takes_the_name_during_the_archive_move_gets_its_own_row(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, after_upload: str
) -> None:
    """The producer renames a new version over the name while the old one is being moved:
    the old one is archived (or deleted) and the new one left in place; its event came
    while the old row was active (and was dropped), so it must be ledgered now, not at the
    next rescan (5 minutes by default)."""
    from syncd import moves

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, after_upload=after_upload)
    root = os.fspath(folder.path)
    up = Uploader(ledger, lambda: {"dest": FakeDestination()}, lambda: {root: folder}, clock=clock)
    old = queue_file(ledger, folder, "a.txt", b"version 1")
    real_unlink = moves.Held.unlink

    def unlink(self: Any) -> bool:
        new = folder.path / ".a.txt.new"
        new.write_bytes(b"version 2")
        os.rename(new, folder.path / "a.txt")  # the producer, at the worst moment
        ledger.observe(root, ["a.txt"], destination="dest")  # its event: the old row holds the name
        return real_unlink(self)

    monkeypatch.setattr(moves.Held, "unlink", unlink)
    assert up.process(ledger.claim_next(["dest"])) == "done"
    newer = ledger.active_for_path(root, "a.txt")
    assert newer is not None and newer.id != old and newer.state == "settling"
    assert (folder.path / "a.txt").read_bytes() == b"version 2"
    ledger.close()


@pytest.mark.parametrize("rebuilt", [False, True])
def test_a_new_file_like_a_deleted_one_in_name_size_mtime_and_inode_is_uploaded(
    tmp_path: Path, clock: FakeClock, rebuilt: bool
) -> None:
    """after_upload = "delete", then tomorrow's build arrives: same name, same size, the
    same reproducible mtime, and ext4 hands it the freed inode. It is a new file, not the
    one uploaded: scans and the settle stage took it for a kept version and ignored it
    for good. ``rebuilt``: an identical build came in between, skipped as a duplicate
    (on_duplicate = "skip") and deleted too."""
    from syncd import scanner
    from syncd.settle import Settler

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, after_upload="delete", settle_seconds=1.0, on_duplicate="skip")
    root = os.fspath(folder.path)
    dest = FakeDestination()
    up = Uploader(ledger, lambda: {"dest": dest}, lambda: {root: folder}, clock=clock)
    settler = Settler(ledger, lambda: {root: folder}, clock=clock)
    path = folder.path / "firmware.bin"
    epoch = 315532800  # 1980-01-01: what SOURCE_DATE_EPOCH builds and zip give

    def build(data: bytes, *, reused: bool = False) -> None:
        """The build dropped, settled and handled. ``reused``: it has the inode of the
        files before it, which ext4 often gives a file created after another's deletion
        (set in the ledger here, so the test does not hang on the file system's luck)."""
        path.write_bytes(data)
        os.utime(path, (epoch, epoch))
        if reused:
            with ledger._lock:
                ledger._conn.execute("UPDATE files SET inode = ?", (path.stat().st_ino,))
        assert scanner.scan_folder(ledger, folder) == 1
        for _ in range(3):
            clock.advance(1.1)
            settler.tick()
        row = ledger.claim_next(["dest"])
        assert row is not None and up.process(row) in ("done", "skipped") and not path.exists()

    build(b"version-1" * 100)
    if rebuilt:
        build(b"version-1" * 100)
        assert ledger.counts()["skipped"] == 1
    build(b"version-2" * 100, reused=True)
    assert [data for _, data in dest.received] == [b"version-1" * 100, b"version-2" * 100]
    ledger.close()


def test_a_file_mended_in_failed_dir_between_two_attempts_is_sent_from_the_start(
    setup: Any, tmp_path: Path, clock: FakeClock
) -> None:
    """After `syncd retry`, an attempt leaves parts with the service, then the operator
    edits the file in failed_dir (same size): the next attempt must not resume after the
    old bytes' parts. The service's copy would mix old and new bytes."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"rejected once")
    dest.script = [PermanentError("HTTP 400: bad type")]
    assert step() == "failed"
    dest.aborted.clear()
    ledger.requeue_failed([row_id])
    dest.script = [RetryableError("HTTP 408")]  # a failure of the file: resume state kept
    assert step() == "retrying"
    assert ledger.get(row_id).resume == {"v": 1, "session": "s1"}
    copy = tmp_path / "failed" / "inbox" / "a.txt"
    copy.write_bytes(b"MENDED ONCE!!")  # same size
    clock.advance(60)
    assert step() == "done"
    assert dest.aborted == [{"v": 1, "session": "s1"}]  # the old bytes' session
    assert dest.received[-1][1] == b"MENDED ONCE!!"
    assert dest.resumed[-1] is None  # sent from the start


def test_an_archive_gone_read_only_is_said_though_one_file_keeps_failing_on_its_own() -> None:
    """A file known to fail on its own keeps its folder marked stuck without a word; the
    first failure of another file after that (the archive went read-only) is news."""
    import errno

    from syncd.stuck import Stuck

    stuck = Stuck()
    assert stuck.failed("/in", 1, OSError(errno.EACCES, "Permission denied"))  # said
    assert stuck.worked("/in", 2)  # another file got through: "works again"
    assert not stuck.failed("/in", 1, OSError(errno.EACCES, "Permission denied"))  # known: quiet
    read_only = OSError(errno.EROFS, "Read-only file system")
    assert stuck.failed("/in", 10, read_only)  # news
    assert stuck.problems() == {"/in": "Read-only file system"}
    assert not stuck.failed("/in", 11, read_only)  # said once
    assert stuck.worked("/in", 12)


def test_a_pool_grown_after_it_shrank_gives_every_worker_a_name_never_used(setup: Any) -> None:
    """The heartbeat of a worker goes by its thread's name. Names were "upload-N" with N
    the pool's size: shrunk while its last worker was still uploading, then grown, the
    pool named a new worker like that one, whose heartbeat it replaced (a hang unseen)."""
    import threading

    ledger, folder, dest, up, drop, step = setup

    def names() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("upload-")}

    up.resize(4)
    try:
        first = names()
        up.resize(2)
        up.wake()
        deadline = time.monotonic() + 10
        while len(names()) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        up.resize(4)
        assert len(names()) == 4 and not (names() - first) & first
        assert len(names() - first) == 2  # two new names
    finally:
        up.stop_claiming()
        up.join(10)


def test_archiving_a_backlog_takes_a_budget_at_a_time_on_the_main_loop(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive folder that works again after thousands of files waited: the sweep
    archived all of them in one go on the main loop (75 s without a watchdog ping was
    measured), and systemd killed a healthy daemon. Now a budget at a time."""
    import errno

    from syncd import archive, recovery
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    monkeypatch.setattr(archive, "finish", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    for i in range(5):
        drop(f"f{i}.txt")
        assert step() == "uploaded"
    monkeypatch.undo()
    monkeypatch.setattr(recovery, "BUDGET", 0.0)  # one file a call
    sweeps = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    calls = 0
    sweeps.more = True
    while sweeps.more:
        sweeps.finish_uploaded()
        calls += 1
        assert ledger.counts()["done"] == min(calls, 5)
    assert calls >= 5 and ledger.counts()["done"] == 5


@pytest.mark.parametrize("attempts_left", [True, False])
def test_an_unexpected_error_after_the_upload_is_recorded_leaves_the_row_uploaded(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attempts_left: bool
) -> None:
    """A bug after ``uploaded`` was committed (here: in the sidecar step of the archive
    move) must not turn the row back into a retry, nor, on its last attempt, abort the
    upload the service confirmed: the file is in the archive already."""
    ledger, folder, dest, up, drop, _ = setup
    row_id = drop("a.pdf", b"bytes")
    if not attempts_left:
        ledger._conn.execute("UPDATE files SET attempts = 2 WHERE id = ?", (row_id,))  # max_attempts 3

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("syncd.archive.finish_sidecar", boom)
    me = threading.current_thread()
    up._threads.append(me)
    up._target = 1
    assert up._turn(me, Liveness().pulse("test", "worker"))
    row = ledger.get(row_id)
    assert row.state == "uploaded" and row.receipt is not None
    assert dest.aborted == [] and len(dest.received) == 1
    assert (tmp_path / "archive" / "inbox" / "a.pdf").read_bytes() == b"bytes"


def test_uploaded_files_are_archived_by_the_archiver_thread_never_on_the_caller(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy into an archive on another file system takes as long as the file is big:
    the sweep only asks the archiver, whose pulse carries the copy's allowance, and the
    main loop goes on ticking (and pinging the watchdog) meanwhile."""
    import errno

    from syncd import archive
    from syncd.liveness import local_allowance
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    real_finish = archive.finish
    monkeypatch.setattr(archive, "finish", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    row_id = drop("big.bin")
    assert (
        step() == "uploaded" and ledger.get(row_id).state == "uploaded"
    )  # its archive move failed: the sweep's job
    monkeypatch.setattr(archive, "finish", real_finish)
    copying, release = threading.Event(), threading.Event()
    on: list[str] = []

    def slow_finish(*args: Any, **kw: Any) -> None:
        on.append(threading.current_thread().name)
        copying.set()
        release.wait(10)  # a copy of many gigabytes
        real_finish(*args, **kw)

    monkeypatch.setattr(archive, "finish", slow_finish)
    liveness = Liveness()
    passes: list[int] = []
    recovery = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    recovery.start(liveness, lambda: passes.append(1))
    t0 = time.monotonic()
    recovery.sweep()
    assert time.monotonic() - t0 < 0.5  # the caller does not wait for the copy
    assert copying.wait(10) and on == ["archiver"]
    silence = liveness._pulses["archiver"].silence(time.monotonic())
    assert silence is not None and silence[1] == local_allowance(ledger.get(row_id).size)
    assert "archiving" in silence[2]
    release.set()
    wait_until(lambda: ledger.get(row_id).state == "done", 10, what="archived")
    wait_until(lambda: passes, 5, what="the pass said")
    assert recovery.stop(5) and "archiver" not in liveness._pulses


def test_the_disk_full_probe_trusts_only_an_archiver_pass_that_began_after_it_asked(
    setup: Any,
) -> None:
    """A worker's archive move hit ENOSPC after the archiver's last pass: that older
    pass's "not full" must not resume uploads; the next probe goes by a pass it asked for."""
    from syncd.liveness import Liveness
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    recovery = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    recovery.start(Liveness())
    recovery.request()
    wait_until(lambda: recovery._answered >= 1, 10, what="a first pass")
    assert recovery.full is False
    assert recovery.archive_full() is True  # nothing asked by a probe answered yet
    wait_until(lambda: recovery._answered >= recovery._asked, 10, what="the pass it asked for")
    assert recovery.archive_full() is False  # that pass found no disk full
    assert recovery.stop(5)


def test_an_archive_move_that_outlives_the_stop_ends_with_a_line_not_a_traceback(
    setup: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of many gigabytes still running when the stop's grace is over: the
    ledger is closed under it, and its last write fails. That is the crash case the next
    start handles: said at INFO, no ERROR with a traceback."""
    import errno
    import sqlite3

    from syncd import archive
    from syncd.liveness import Liveness
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    caplog.set_level(logging.INFO, "syncd.daemon")
    monkeypatch.setattr(archive, "finish", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    drop("big.bin")
    assert step() == "uploaded"
    copying, release = threading.Event(), threading.Event()

    def copy_then_closed_ledger(*args: Any, **kw: Any) -> None:
        copying.set()
        release.wait(10)
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    monkeypatch.setattr(archive, "finish", copy_then_closed_ledger)
    recovery = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    recovery.start(Liveness())
    recovery.request()
    assert copying.wait(10)
    assert recovery.stop(0.1) is False  # still copying
    release.set()
    assert recovery.stop(5)
    assert any("cut short by the stop" in r.message for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "syncd.daemon"]


def test_a_refusal_of_settings_a_reload_replaced_does_not_pause_the_new_ones(
    setup: Any, clock: FakeClock
) -> None:
    """An upload began with the old key; the operator fixed the key and reloaded; the old
    key's 401 came after. It paused the destination for a minute on the new key's circuit
    (and told the webhook it was down): now the file is simply queued again."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")

    def reload_then_refused(source: Source) -> None:
        up.reset_circuits(["dest"])
        raise FatalError("HTTP 401: invalid api key")

    dest.script = [reload_then_refused]
    row = ledger.claim_next(["dest"])
    up.circuits.claimed(row)
    assert up.process(row) == "queued"
    up.circuits.attempt_over(row.id, row.destination)
    assert up.destination_states()["dest"].state == "up"
    again = ledger.get(row_id)
    assert again.attempts == 0 and again.next_attempt_at <= clock()
    assert "on settings a reload replaced" in again.last_error
    assert step() == "done"  # the next attempt, on the new settings


def test_an_outage_of_settings_a_reload_replaced_does_not_open_the_new_circuit(
    setup: Any, clock: FakeClock
) -> None:
    ledger, folder, dest, up, drop, step = setup
    ids = [drop(f"f{i}.txt") for i in range(THRESHOLD)]
    rows = [ledger.claim_next(["dest"]) for _ in ids]
    for row in rows:
        up.circuits.claimed(row)
    up.reset_circuits(["dest"])  # the reload fixed base_url while they were in flight
    dest.down = REFUSED
    assert [up.process(row) for row in rows] == ["queued"] * THRESHOLD
    assert up.destination_states()["dest"].state == "up"


def test_a_reload_keeps_the_wait_a_rate_limit_asked_for(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    up.circuit("dest").rate_limited(30.0, "rate limited (HTTP 429)")
    up.reset_circuits(["dest"])
    state = up.destination_states()["dest"]
    assert state.state == "rate_limited" and state.next_probe_at == pytest.approx(clock() + 30.0)


def test_uploads_resume_once_the_ledger_takes_writes_whatever_an_archive_says(setup: Any) -> None:
    """The ledger and an archive full at once: once the ledger's disk has room, claims
    resume (and the folders are rescanned) though the archive is still full."""
    import errno

    ledger, folder, dest, up, drop, step = setup
    full = up.disk_full
    full.note("ledger", OSError(errno.ENOSPC, "database or disk is full"))
    full.note("archive", OSError(errno.ENOSPC, "No space left on device"), folder.archive_dir)
    rescanned: list[str] = []
    root = os.fspath(folder.path)
    full.probe(ledger, {root: folder}, lambda: True, rescanned.append)  # the archive: still full
    assert not full.paused and rescanned == [root]
    assert full.describe() == [
        f"archive full ({folder.archive_dir}: No space left on device): uploaded files wait in the inbox"
    ]
    full.probe(ledger, {root: folder}, lambda: False, rescanned.append)
    assert not full and rescanned == [root]


def test_an_uploaded_file_held_open_is_counted_until_it_goes(
    setup: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A process has the uploaded file open for writing: the row stays uploaded, said
    once (not a stuck folder), and counted per folder for `once` until it goes."""
    import errno

    from syncd import archive
    from syncd.moves import StillOpen
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    real_finish = archive.finish

    def held(*args: Any, **kw: Any) -> None:
        raise StillOpen(errno.EBUSY, "a process still has it open for writing")

    monkeypatch.setattr(archive, "finish", held)
    drop("a.txt")
    with caplog.at_level("DEBUG", logger="syncd.uploader"):
        assert step() == "uploaded"
        root = os.fspath(folder.path)
        recovery = Recovery(ledger, lambda: {root: folder}, up)
        recovery.sweep()  # tried again: said at debug level only
    said = [r for r in caplog.records if "still has it open for writing" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING", "DEBUG"]
    assert up.procedure.after.open_by_folder() == {root: 1} and not up.procedure.after.stuck.problems()
    monkeypatch.setattr(archive, "finish", real_finish)
    recovery.sweep()
    assert ledger.counts()["done"] == 1 and up.procedure.after.open_by_folder() == {}


def test_the_drain_counts_archive_moves_apart_from_uploads(setup: Any) -> None:
    """A row in flight that is uploaded already is being archived: at a stop it is said
    as an archive move, not as an upload to resume from its last confirmed part."""
    from syncd.shutdown import _in_flight

    ledger, folder, dest, up, drop, step = setup
    drop("a.txt")
    drop("b.txt")
    sending = up._claim()
    archiving = up._claim()
    assert sending is not None and archiving is not None
    ledger.mark_uploaded(archiving.id, sha256="ab" * 32, receipt={"remote_id": "r"})
    assert _in_flight(up) == (1, 1)


def _six_waiting_for_a_full_archive(setup: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    """Six files uploaded whose archive is full, one sweep past: the sweeper, and the
    archive moves tried from now on (they fail with ENOSPC)."""
    import errno

    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    calls = _archive_fails(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    for i in range(6):
        drop(f"f{i}.txt")
    for _ in range(6):
        assert step() == "uploaded"
    root = os.fspath(folder.path)
    recovery = Recovery(ledger, lambda: {root: folder}, up)
    recovery.sweep()
    calls.clear()
    return recovery, calls


def test_a_full_archive_whose_probe_fits_is_still_tried_one_failure_a_sweep(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full archive takes the probe (a link needs no data blocks) but not the next file:
    the pass ends at that failure, not after trying every file of the folder."""
    import errno

    from syncd import archive

    ledger, folder, dest, up, drop, step = setup
    real = archive.finish
    recovery, calls = _six_waiting_for_a_full_archive(setup, monkeypatch)
    n = {"ok": 0}

    def first_fits(*args: Any, **kw: Any) -> None:
        calls.append(args[1].id)
        if n["ok"] == 0:
            n["ok"] += 1
            return real(*args, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive, "finish", first_fits)
    assert up.disk_full.archive_full(folder)
    recovery.sweep()
    assert len(calls) <= 2


def test_a_full_archive_whose_probe_row_a_worker_holds_is_tried_once_a_sweep(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe row is in a worker's hands: the next file is the probe, one try."""

    ledger, folder, dest, up, drop, step = setup
    root = os.fspath(folder.path)
    recovery, calls = _six_waiting_for_a_full_archive(setup, monkeypatch)
    nxt = recovery._stuck_after[root] + 1
    up.stats.inflight[nxt] = "held by a worker"  # the probe row is in a worker's hands
    recovery.sweep()
    assert len(calls) <= 1


@pytest.mark.parametrize("error", ["database is locked", "database or disk is full"])
def test_an_upload_the_ledger_could_not_record_at_once_is_recorded_not_sent_again(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """The service confirmed the file, then "uploaded" could not be committed: another
    process held the ledger's write lock past the busy timeout (a `sqlite3` shell, a long
    `syncd retry`), or its disk was full. The row was left uploading, the sweep requeued
    it and the whole file was sent again (a single PUT: a second copy on the service),
    though nothing crashed and the receipt was in hand.
    The worker records it once the ledger takes writes again."""
    import sqlite3

    from syncd import hand_over
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    monkeypatch.setattr(hand_over, "RECORD_WAIT", 0.01)
    row_id = drop("a.txt", b"confirmed by the service")
    real = ledger.mark_uploaded
    tries: list[int] = []

    def failing(*args: Any, **kw: Any) -> None:
        tries.append(1)
        if len(tries) < 3:
            raise sqlite3.OperationalError(error)  # the first try, and the one after a wait
        real(*args, **kw)

    monkeypatch.setattr(ledger, "mark_uploaded", failing)
    try:
        state = step()
    except sqlite3.Error:
        state = ledger.get(row_id).state  # left uploading
        monkeypatch.setattr(ledger, "mark_uploaded", real)
        Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up).sweep()  # requeued
        again = ledger.claim_next(["dest"])
        if again is not None:
            up.process(again)
    assert dest.calls == 1, "the confirmed file was uploaded a second time"
    assert state == "done" and len(tries) == 3
    row = ledger.get(row_id)
    assert row.state == "done" and row.receipt == {"remote_id": "obj/a.txt", "url": "http://x/obj"}
    assert (tmp_path / "archive" / "inbox" / "a.txt").read_bytes() == b"confirmed by the service"
    assert ("ledger" in up.disk_full) == ("full" in error)


def test_an_upload_not_recorded_when_syncd_stops_is_left_to_the_next_start(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording is tried again only while syncd runs: a stop ends the wait, and the row,
    still uploading, is requeued with its resume state like any upload in flight."""
    import sqlite3

    from syncd import hand_over

    ledger, folder, dest, up, drop, step = setup
    monkeypatch.setattr(hand_over, "RECORD_WAIT", 0.01)
    row_id = drop("a.txt")

    def locked(*args: Any, **kw: Any) -> None:
        up.cancel()
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger, "mark_uploaded", locked)
    with pytest.raises(sqlite3.OperationalError):
        step()
    assert ledger.get(row_id).state == "uploading"


def test_a_queued_file_of_a_folder_another_syncd_holds_is_not_sent(tmp_path: Path, clock: FakeClock) -> None:
    """Rows queued before the folder became another syncd's (left by a crash, a backlog
    while the folder was away and the other took it over): the other uploads the folder's
    files, so a worker here sent each a second time, the file being right there. A row
    whose folder is unusable waits for it, as one whose file it cannot find does."""
    from syncd.retry_policy import FOLDER_WAIT

    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path)
    root = os.fspath(folder.path)
    dest = FakeDestination()
    problem: list[str | None] = ["already watched by another syncd (pid 4321)"]
    up = Uploader(
        ledger,
        lambda: {"dest": dest},
        lambda: {root: folder},
        clock=clock,
        folder_problem=lambda r: problem[0],
    )
    row_id = queue_file(ledger, folder, "a.txt", b"theirs to send")
    assert up.process(ledger.claim_next(["dest"])) == "retrying"
    row = ledger.get(row_id)
    assert dest.calls == 0, "sent though another syncd holds the folder"
    assert "already watched by another syncd" in (row.last_error or "") and row.attempts == 0
    problem[0] = None  # the other let go: this one takes the folder over
    clock.advance(FOLDER_WAIT + 1)
    assert up.process(ledger.claim_next(["dest"])) == "done" and dest.calls == 1
    ledger.close()


def test_out_of_descriptors_spends_no_attempt_and_a_confirmed_upload_is_not_sent_again(
    setup: Any, monkeypatch: pytest.MonkeyPatch, clock: FakeClock, tmp_path: Path
) -> None:
    """EMFILE is syncd's own shortage (its LimitNOFILE=), not the file's: opening the file
    with it spent an attempt each time (`max_attempts = 3`: failed, "gave up after 3
    attempts: cannot open the file: Too many open files"). And once the service had
    confirmed an upload, an EMFILE in the look at where the file is now discarded the
    upload: the file was sent again. Now the file waits without spending attempts, and a
    confirmed upload is recorded and archived by the sweep, as after a crash."""
    import errno

    from syncd import upload_source
    from syncd.destinations import base
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"bytes")
    emfile = OSError(errno.EMFILE, "Too many open files")
    real_init = upload_source.StoppableSource.__init__

    def no_descriptor(self: Any, *args: Any, **kwargs: Any) -> None:
        raise emfile

    monkeypatch.setattr(upload_source.StoppableSource, "__init__", no_descriptor)
    for _ in range(5):
        assert step() == "retrying"
        clock.advance(60)
    row = ledger.get(row_id)
    assert row.attempts == 0 and "out of file descriptors" in row.last_error
    assert any(p.startswith("out of file descriptors") for p in up.policy.shortages.describe())
    monkeypatch.setattr(upload_source.StoppableSource, "__init__", real_init)
    real_check = base.Source.check_unchanged

    def check_short(self: Any, *, path: bool = True) -> None:
        if path:
            raise emfile
        real_check(self, path=path)

    monkeypatch.setattr(base.Source, "check_unchanged", check_short)
    assert step() == "uploaded"
    assert len(dest.received) == 1 and ledger.get(row_id).state == "uploaded"
    monkeypatch.setattr(base.Source, "check_unchanged", real_check)
    Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up).finish_uploaded()
    assert ledger.get(row_id).state == "done" and len(dest.received) == 1
    assert (tmp_path / "archive" / "inbox" / "a.txt").read_bytes() == b"bytes"


def test_an_entry_an_interrupted_move_left_is_not_taken_for_nothing_when_out_of_descriptors(
    setup: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An archive move cut short after it placed its copy (here: left as a crash or an
    EMFILE would leave it) is finished by the sweep from that entry. Out of descriptors to
    open the entry, it was taken for "nothing there": a second copy went under a suffixed
    name (`a (1).txt`) and the first stayed in the archive with no row pointing at it.
    Now the sweep leaves the row for later, and then finishes the move at the entry."""
    import errno

    from syncd import earlier, safefs
    from syncd.destinations import base
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"bytes")
    real_check = base.Source.check_unchanged

    def check_short(self: Any, *, path: bool = True) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(base.Source, "check_unchanged", check_short)
    assert step() == "uploaded"  # recorded, left for the sweep
    monkeypatch.setattr(base.Source, "check_unchanged", real_check)
    planned = Path(ledger.get(row_id).archive_path)
    planned.parent.mkdir(parents=True, exist_ok=True)
    planned.write_bytes(b"bytes")  # the copy an interrupted move placed there
    real_open = safefs.open_file
    short = [True]

    def open_short(base_dir: Any, rel: str, *args: Any, **kwargs: Any) -> int:
        if short[0] and rel.endswith("a.txt") and "archive" in str(base_dir):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(base_dir, rel, *args, **kwargs)

    monkeypatch.setattr(earlier.safefs, "open_file", open_short)
    sweep = Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up)
    sweep.finish_uploaded()
    assert sorted(p.name for p in planned.parent.iterdir()) == ["a.txt"]
    assert ledger.get(row_id).state == "uploaded"
    short[0] = False
    sweep.finish_uploaded()
    row = ledger.get(row_id)
    assert row.state == "done" and row.location == str(planned)
    assert sorted(p.name for p in planned.parent.iterdir()) == ["a.txt"]
    assert not (folder.path / "a.txt").exists() and len(dest.received) == 1


def test_a_file_renamed_during_its_upload_is_not_taken_for_gone_when_out_of_descriptors(
    setup: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Renamed a.txt -> b.txt while it was sent. Out of file descriptors for the walk that
    finds it by its inode, the file was taken for gone: "nothing archived", and b.txt,
    the same bytes, was uploaded again under its new name. The upload is now recorded and
    the sweep finds and archives the file once descriptors are free."""
    import errno

    from syncd import safefs
    from syncd.recovery import Recovery

    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"bytes")
    dest.script.append(lambda source: os.rename(folder.path / "a.txt", folder.path / "b.txt"))
    real_walk, real_open_root = safefs.walk, safefs.open_root
    short, walking = [True], [False]

    def walk(*args: Any, **kwargs: Any) -> Any:
        walking[0] = True
        try:
            yield from real_walk(*args, **kwargs)
        finally:
            walking[0] = False

    def open_root(*args: Any, **kwargs: Any) -> int:
        if short[0] and walking[0]:  # the walk's first descriptor
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open_root(*args, **kwargs)

    monkeypatch.setattr(safefs, "walk", walk)
    monkeypatch.setattr(safefs, "open_root", open_root)
    assert step() == "uploaded"
    row = ledger.get(row_id)
    assert row.state == "uploaded" and "nothing archived" not in (row.last_error or "")
    assert any(p.startswith("out of file descriptors") for p in up.policy.shortages.describe())
    short[0] = False
    Recovery(ledger, lambda: {os.fspath(folder.path): folder}, up).finish_uploaded()
    row = ledger.get(row_id)
    assert row.state == "done" and len(dest.received) == 1
    assert (tmp_path / "archive" / "inbox" / "a.txt").read_bytes() == b"bytes"
    assert not (folder.path / "b.txt").exists()
