"""The start that upgrades a ledger of an older syncd: said in the log and on STATUS=,
and kept alive under systemd's start timeout while the migration runs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.errors import LedgerUnreachable
from syncd.ledger import SCHEMA_VERSION, Ledger
from syncd.lock import StateLock
from syncd.starting import open_ledger, upgrading
from tests.unit.test_ledger import _schema_2_ledger


class Notifier:
    def __init__(self) -> None:
        self.extended: list[tuple[float, str, float]] = []

    def extend(self, status: str, seconds: float) -> None:
        self.extended.append((time.monotonic(), status, seconds))


def test_the_start_says_it_upgrades_an_older_ledger_and_asks_for_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Migrating a ledger of ten million rows takes minutes (a million: 9 s here), in one
    transaction: the start said nothing and asked systemd for no time, so TimeoutStartSec
    ended it, the migration rolled back, and every restart began it again."""
    path = tmp_path / "ledger.sqlite3"
    _schema_2_ledger(path)
    notifier = Notifier()
    with caplog.at_level(logging.INFO, logger="syncd.daemon"):
        ledger = open_ledger(path, threading.Event(), notifier)
    assert ledger is not None
    ledger.close()
    assert f"upgrading the ledger from schema 2 to {SCHEMA_VERSION}" in caplog.text
    assert f"the ledger is at schema {SCHEMA_VERSION}" in caplog.text
    assert notifier.extended and notifier.extended[0][1].startswith("upgrading the ledger")
    # a new ledger is created, not upgraded: nothing to say
    caplog.clear()
    notifier.extended.clear()
    open_ledger(tmp_path / "new.sqlite3", threading.Event(), notifier).close()  # type: ignore[union-attr]  # not None: not stopped
    assert "upgrading" not in caplog.text and not notifier.extended


def test_a_long_upgrade_keeps_asking_for_more_start_time(tmp_path: Path) -> None:
    notifier = Notifier()
    with upgrading(notifier, tmp_path / "ledger.sqlite3", 2, SCHEMA_VERSION, every=0.05):
        time.sleep(0.4)
    times = [t for t, _, _ in notifier.extended]
    assert len(times) >= 4
    assert all(seconds == pytest.approx(0.15) for _, _, seconds in notifier.extended)
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 0.15  # never lapsed
    # and none after it ended
    n = len(notifier.extended)
    time.sleep(0.15)
    assert len(notifier.extended) == n


def test_a_look_while_the_daemon_upgrades_the_ledger_says_to_wait_not_to_restart(tmp_path: Path) -> None:
    """`syncd status` during the upgrade told the operator to restart syncd: that rolls the
    upgrade back, and the next start begins it again."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "ledger.sqlite3"
    _schema_2_ledger(path)
    lock = StateLock(state)
    lock.acquire()  # a syncd starting on it: no heartbeat of its own in the ledger yet
    try:
        with pytest.raises(LedgerUnreachable) as starting:
            Ledger.open(path, readonly=True).close()
        assert f"syncd starting now (pid {os.getpid()}) upgrades first" in str(starting.value)
        assert "do not restart syncd" in str(starting.value)
        assert "systemctl restart" not in str(starting.value)
        # the older syncd running on it (its heartbeat names the lock's holder): restart it
        conn = sqlite3.connect(path)
        conn.execute("INSERT INTO kv VALUES ('daemon', ?, 0)", (json.dumps({"pid": os.getpid()}),))
        conn.commit()
        conn.close()
        with pytest.raises(LedgerUnreachable, match=r"older syncd \(schema 2\).*systemctl restart syncd"):
            Ledger.open(path, readonly=True).close()
    finally:
        lock.release()


def test_an_upgrade_that_makes_no_progress_stops_asking_for_start_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The asks for more start time went on as long as the migration did: one hung on a
    dead disk kept the start "activating" for good, never ended by TimeoutStartSec= and
    never restarted. They now go on only while the migration gets on (SQLite's progress
    handler); without progress for MIGRATE_STALL seconds they stop, said once."""
    notifier = Notifier()
    with upgrading(notifier, tmp_path / "ledger.sqlite3", 2, SCHEMA_VERSION, every=0.02, stall=0.3) as step:
        for _ in range(20):  # getting on: asked all along
            step()
            time.sleep(0.02)
        assert notifier.extended and "no progress" not in caplog.text
        deadline = time.monotonic() + 10
        while "no progress" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)  # hung: no more calls
        assert "the ledger upgrade has made no progress" in caplog.text
        n = len(notifier.extended)
        time.sleep(0.2)
        assert len(notifier.extended) == n  # none after it was taken for hung


def test_a_real_migration_tells_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.ledger import writer

    monkeypatch.setattr(writer, "MIGRATE_PROGRESS_STEPS", 10)  # a small ledger: few steps
    path = tmp_path / "ledger.sqlite3"
    _schema_2_ledger(path)
    calls = []

    @contextlib.contextmanager
    def migrating(old: int, new: int) -> Iterator[Callable[[], None]]:
        yield lambda: calls.append(1)

    Ledger.open(path, migrating=migrating).close()
    assert calls
