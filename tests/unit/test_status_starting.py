"""`syncd status` while the daemon holds the state lock but has not opened the ledger
yet (it waits at start for another process's write lock, or for space): the heartbeat
in the ledger is an earlier daemon's, and must not be shown as this one's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from syncd.commands import status as statusmod
from syncd.lock import StateLock
from tests.unit.test_cli_operator import cfg, daemon_lock, heartbeat, ledger_of, run

__all__ = ["cfg", "daemon_lock"]  # fixtures


def test_status_of_a_daemon_still_starting_shows_no_earlier_daemons_heartbeat(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_of(cfg)
    heartbeat(
        ledger,
        pid=999_999,  # the daemon that ran before: it stopped an hour ago
        started_at=time.time() - 7200,
        heartbeat=time.time() - 3600,
        problems=["destination main down since 10:00:00: HTTP 503"],
    )
    ledger.close()
    monkeypatch.setattr(statusmod, "lock_holder", lambda path: "pid 4321, sqlite3", raising=False)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert code == 0
    assert "up 7200s" not in out and "HTTP 503" not in out and "HEARTBEAT OLD" not in out
    assert "daemon: starting (pid" in out
    assert "problem: the ledger's write lock is held by pid 4321, sqlite3" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])["daemon"]
    assert data["running"] is True and data["starting"] is True
    assert data["ledger_locked_by"] == "pid 4321, sqlite3"
    assert "uptime_seconds" not in data and "problems" not in data
