"""Liveness: the watchdog is fed only while every stage progresses (syncd/liveness.py).

The rule on a fake clock; a worker whose long upload keeps reading is alive
while one that reads nothing past the bound is wedged; and the daemon in
process, with a notify socket standing in for systemd, stops sending
``WATCHDOG=1`` while an upload worker is stuck and starts again once it moves.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syncd import liveness
from syncd.destinations.base import Capabilities, Receipt, Source, UploadItem
from syncd.ledger import Ledger
from syncd.liveness import Bounds, Liveness, Stall, local_allowance
from syncd.uploader import Uploader
from tests.conftest import FakeClock, make_folder, queue_file
from tests.harness import wait_until

BOUNDS = Bounds(main=30.0, scan=1800.0, worker=600.0)


def test_the_rule_on_a_fake_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1000.0)
    live = Liveness(BOUNDS, clock=clock)
    main = live.pulse("main loop", "main")
    scanner = live.pulse("scanner", "scan")
    worker = live.pulse("upload-1", "worker")
    main.step("ticking")
    clock.advance(7200)  # idle stages are never judged, however long they wait
    main.beat()
    assert live.stalls() == [] and live.alive()

    worker.step("taking work")
    for _ in range(12):  # an upload of two hours that keeps reading
        clock.advance(599)
        worker.beat()
        main.beat()
    assert live.stalls() == []
    clock.advance(601)  # 601 s since the last block read
    main.beat()
    assert live.stalls() == [Stall("upload-1", "taking work", 601.0, 600.0)]

    worker.phase("hashing (on_duplicate)", local_allowance(50 * 10**9))  # +5,000 s
    clock.advance(5000)
    main.beat()
    assert live.stalls() == []
    clock.advance(601)
    main.beat()
    assert [s.stage for s in live.stalls()] == ["upload-1"]
    worker.idle()

    scanner.step("scanning '/srv/in'")  # one scan: no progress of its own
    clock.advance(1800)
    main.beat()
    assert live.stalls() == []
    clock.advance(1)
    assert [str(s) for s in live.stalls()] == [
        "scanner (scanning '/srv/in') has made no progress for 1801s (bound 1800s)"
    ]
    scanner.idle()
    main.beat()

    clock.advance(31)  # the main loop's last tick is 31 s old
    assert [s.stage for s in live.stalls()] == ["main loop"]

    # alive(): said once at ERROR while it lasts, and once when it moves again
    caplog.set_level(logging.INFO, logger="syncd.daemon")
    assert not live.alive() and not live.alive()
    main.beat()
    assert live.alive() and live.alive()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0][0] == "ERROR" and said[0][1].startswith(
        "wedged: main loop (ticking) has made no progress for 31s (bound 30s)"
    ), said
    assert said[1:] == [("WARNING", "main loop moves again (it was stuck ticking); watchdog pings resume")]

    worker.step("sending to d")  # a worker that exits is not judged any more
    clock.advance(900)
    main.beat()
    assert not live.alive()
    live.release(worker)
    assert live.alive()


def test_the_worker_bound_follows_the_timeouts() -> None:
    from syncd.config import DaemonConfig

    assert Bounds.for_config(DaemonConfig()).worker == 600.0  # defaults: 300 + 4 * 70 < 600
    slow = DaemonConfig(connect_timeout=10.0, io_timeout=300.0)
    assert Bounds.for_config(slow).worker == 300.0 + 4 * 310.0


class _Reader:
    """Reads the file one block at a time; the fake clock moves ``per_block`` per block."""

    TYPE: ClassVar[str] = "reader"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels=None, category=None)
    Options: ClassVar[type] = object

    def __init__(self, clock: FakeClock, live: Liveness, per_block: float, before: float = 0.0) -> None:
        self.name = "d"
        self.clock, self.live = clock, live
        self.per_block, self.before = per_block, before
        self.seen: list[list[Stall]] = []

    def upload(self, item: UploadItem, source: Source, resume: Any, checkpoint: Any) -> Receipt:
        self.clock.advance(self.before)  # waiting for the service without reading
        self.seen.append(self.live.stalls())
        for _ in source.iter_range(0, source.size, block=1024):
            self.clock.advance(self.per_block)
            self.seen.append(self.live.stalls())
        return Receipt(remote_id="r")

    def abort(self, resume: Any) -> None:
        pass

    def probe(self) -> str:
        return "ok"

    def close(self) -> None:
        pass


@pytest.mark.parametrize("per_block, before, wedged", [(400.0, 0.0, False), (0.0, 700.0, True)])
def test_a_worker_reading_its_file_progresses(
    tmp_path: Path, per_block: float, before: float, wedged: bool
) -> None:
    """Every block read for sending is progress (the Source tells the worker's pulse)."""
    clock = FakeClock(1000.0)
    live = Liveness(BOUNDS, clock=clock)
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    folder = make_folder(tmp_path, destination="d", after_upload="keep")
    dest = _Reader(clock, live, per_block, before)
    up = Uploader(ledger, lambda: {"d": dest}, lambda: {os.fspath(folder.path): folder}, liveness=live)
    try:
        queue_file(ledger, folder, "a.bin", os.urandom(4 * 1024))
        row = ledger.claim_next(["d"])
        assert row is not None
        pulse = live.pulse("upload-1", "worker")
        pulse.step("taking work")
        assert up.procedure.run(row, pulse) == "done"
        assert len(dest.seen) == 5 and clock() - 1000.0 == 4 * per_block + before
        if wedged:
            assert [s.stage for s in dest.seen[0]] == ["upload-1"]
            assert dest.seen[0][0].doing == "sending to d"
        else:
            assert dest.seen == [[]] * 5  # 1,600 s in all, never 600 s without a block
    finally:
        ledger.close()


# -- the daemon in process, a notify socket standing in for systemd -----------------------------


class _Pings:
    """A bound AF_UNIX datagram socket: the times at which WATCHDOG=1 arrived."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="syncd-liveness-")
        self.address = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.times: list[float] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            lines = data.split("\n")
            if "WATCHDOG=1" in lines:
                self.times.append(time.monotonic())
            if "READY=1" in lines:
                self.ready.set()

    def since(self, t: float) -> list[float]:
        return [p for p in self.times if p >= t]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        os.unlink(self.address)
        os.rmdir(self.dir)


class _Stuck:
    """An upload that hangs without reading the file until the test lets it go."""

    TYPE: ClassVar[str] = "stuck"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels=None, category=None)
    Options: ClassVar[type] = object

    def __init__(self) -> None:
        self.name = "d"
        self.entered = threading.Event()
        self.release = threading.Event()

    def upload(self, item: UploadItem, source: Source, resume: Any, checkpoint: Any) -> Receipt:
        self.entered.set()
        self.release.wait(60)
        source.read(0, source.size)
        return Receipt(remote_id="r")

    def abort(self, resume: Any) -> None:
        pass

    def probe(self) -> str:
        return "ok"

    def close(self) -> None:
        pass


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Pings]:
    p = _Pings()
    monkeypatch.setenv("NOTIFY_SOCKET", p.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield p
    p.close()


@pytest.mark.slow
def test_a_wedged_worker_stops_the_watchdog(
    tmp_path: Path, pings: _Pings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from syncd import config as configmod
    from syncd import daemon as daemon_mod
    from syncd import runtime

    monkeypatch.setattr(liveness, "WORKER_BOUND", 1.0)  # instead of 10 minutes
    monkeypatch.setattr(liveness, "SERVICE_WAIT", 0.0)
    stuck = _Stuck()
    monkeypatch.setattr(runtime, "build_destinations", lambda cfg, client: {"d": stuck})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "syncd.toml").write_text(
        '[daemon]\nstate_dir = "state"\nworkers = 1\ndrain_seconds = 5\n'
        "connect_timeout = 0.1\nio_timeout = 0.1\n"
        '[destinations.d]\ntype = "lilt"\napi_key = "liveness-test-key"\n'
        f'[[folders]]\npath = "{inbox}"\ndestination = "d"\nafter_upload = "keep"\n'
        "settle_seconds = 0.1\n"
    )
    caplog.set_level(logging.INFO, logger="syncd.daemon")
    daemon_mod.STOP_REQUESTED.clear()
    d = daemon_mod.Daemon(configmod.load(tmp_path / "syncd.toml"))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(d.run()), name="daemon")
    thread.start()
    try:
        assert pings.ready.wait(20), "no READY=1"
        wait_until(lambda: len(pings.times) >= 3, 10, what="pings while all is well")

        (inbox / "a.txt").write_bytes(b"the upload of this file hangs")
        assert stuck.entered.wait(20), "the upload never began"
        began = time.monotonic()
        wait_until(
            lambda: any("wedged: upload-1 (sending to d)" in r.getMessage() for r in caplog.records),
            10,
            what="the wedge logged",
        )
        quiet = time.monotonic()
        time.sleep(1.0)
        assert pings.since(quiet) == [], "WATCHDOG=1 went on while a worker was wedged"
        assert pings.since(began + 1.5) == []  # stopped at most about the bound after
        (wedge,) = [r for r in caplog.records if "wedged:" in r.getMessage()]
        assert wedge.levelname == "ERROR"

        stuck.release.set()
        moved = time.monotonic()
        wait_until(lambda: pings.since(moved), 10, what="pings once the worker moved again")
        assert any("upload-1 moves again" in r.getMessage() for r in caplog.records)
    finally:
        stuck.release.set()
        d.stop()
        thread.join(30)
        daemon_mod.STOP_REQUESTED.clear()
    assert codes == [0]
