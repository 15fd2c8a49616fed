"""[daemon] keep_done_days: old rows of files that left the inbox are deleted, a batch a sweep."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from syncd import config as configmod
from syncd import left_sidecars
from syncd.events import Intake
from syncd.ledger import Ledger, State
from syncd.ledger.retention import PRUNED_STATES
from syncd.metrics import Metrics
from syncd.runtime import Runtime
from syncd.watcher import Watcher

DAY = 86400.0
NOW = 1_800_000_000.0


def _history(path: Path) -> None:
    """Rows of every kind, each once 40 days old and once 2 days old (raw SQL: a year of
    history is what is under test)."""
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    kinds = [
        ("archived", State.DONE, b"/archive/x"),
        ("kept", State.DONE, None),  # after_upload = keep: its row recognises the file
        ("duplicate", State.SKIPPED, b"/archive/y"),
        ("failed", State.FAILED, b"/failed/z"),
        ("vanished", State.VANISHED, None),
    ]
    n = 0
    for age in (40, 2):
        for name, state, location in kinds:
            n += 1
            at = NOW - age * DAY
            conn.execute(
                "INSERT INTO files (uuid, folder, relpath, location, state, destination, first_seen,"
                " changed_at, updated_at, done_at) VALUES (?, '/in', ?, ?, ?, 'd', ?, ?, ?, ?)",
                (f"u{n}", f"{name}-{age}".encode(), location, state, at, at, at, at),
            )
    conn.close()


def _left(ledger: Ledger) -> set[str]:
    return {r.relpath for r in ledger.rows()}


def test_old_rows_of_files_that_left_the_inbox_go_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    _history(path)
    ledger = Ledger.open(path)
    try:
        deleted = sum(ledger.prune(s, NOW - 30 * DAY, after=0, limit=100)[0] for s in PRUNED_STATES)
        assert deleted == 3
        assert _left(ledger) == {
            "archived-2",
            "kept-40",
            "kept-2",
            "duplicate-2",
            "failed-40",
            "failed-2",
            "vanished-2",
        }
        counts = ledger.counts()  # the triggers kept them
        assert (counts[State.DONE], counts[State.SKIPPED], counts[State.VANISHED]) == (3, 1, 1)
    finally:
        ledger.close()


def test_a_batch_at_a_time_from_a_cursor_that_wraps_around(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for i in range(25):
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, location, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, '/in', ?, x'2f61', 'done', 'd', 1, 1, 1, 1)",
            (f"u{i}", f"f{i}".encode()),
        )
    conn.execute("COMMIT")
    conn.close()
    ledger = Ledger.open(path)
    try:
        after, seen = 0, []
        for _ in range(3):
            n, after = ledger.prune(State.DONE, NOW, after=after, limit=10)
            seen.append((n, after > 0))
        assert seen == [(10, True), (10, True), (5, False)]  # the last one wraps around
        assert ledger.rows() == []
        assert ledger.prune(State.DONE, NOW, after=0, limit=10) == (0, 0)
    finally:
        ledger.close()


def _config(tmp_path: Path, keep_done_days: object) -> configmod.Config:
    """A config with one folder and ``keep_done_days`` (TEST_KEY must be set)."""
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "state"\nkeep_done_days = {keep_done_days}\n'
        '[destinations.d]\ntype = "lilt"\nbase_url = "http://127.0.0.1:9/lilt"\n'
        'api_key = "env:TEST_KEY"\n[[folders]]\npath = "inbox"\ndestination = "d"\n'
    )
    path.chmod(0o600)
    return configmod.load(path)


def test_the_sweep_prunes_with_keep_done_days_and_not_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", "retention-test-key")
    monkeypatch.setattr("syncd.runtime.time.time", lambda: NOW)
    ledger_path = tmp_path / "state" / "ledger.sqlite3"
    ledger_path.parent.mkdir()
    _history(ledger_path)
    ledger = Ledger.open(ledger_path)
    try:
        for days, left in ((0, 10), (30, 7)):
            runtime = Runtime(
                _config(tmp_path, days),
                ledger,
                watcher=Watcher(Intake()),
                metrics=Metrics(),
                once=True,
                watch=False,
            )
            try:
                runtime.sweep()
            finally:
                runtime.close()
            assert len(ledger.rows()) == left
    finally:
        ledger.close()


def test_pruning_leaves_the_done_per_day_counts_alone(tmp_path: Path) -> None:
    """Files done on a day stay counted for that day after their rows go (history); rows
    that were never counted (salvaged ones) do not take anything off."""
    path = tmp_path / "ledger.sqlite3"
    _history(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(  # counted as the daemon counts them when they become done
        "INSERT INTO done_days (day, n) SELECT date(done_at, 'unixepoch', 'localtime'), COUNT(*)"
        " FROM files WHERE state = 'done' GROUP BY 1"
    )
    counted = "SELECT day, n FROM done_days WHERE n != 0"
    before = dict(conn.execute(counted).fetchall())
    conn.close()
    ledger = Ledger.open(path)
    try:
        assert ledger.prune(State.DONE, NOW - 30 * DAY, after=0, limit=100)[0] == 1
    finally:
        ledger.close()
    conn = sqlite3.connect(path, isolation_level=None)
    assert dict(conn.execute(counted).fetchall()) == before
    conn.close()


def test_keep_done_days_is_whole_days(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "retention-test-key")
    with pytest.raises(configmod.ConfigError) as info:
        _config(tmp_path, 0.5)
    assert "daemon.keep_done_days" in str(info.value) and "0.5" in str(info.value)


def test_the_row_of_a_file_kept_under_the_name_it_got_mid_upload_stays(tmp_path: Path) -> None:
    """after_upload = "keep" and a rename during the upload: the row's location is the new
    name, in the folder. It is how scans know the file, not a sign it left the inbox."""
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    at = NOW - 40 * DAY
    for n, (folder, location) in enumerate(
        [("/in", b"/in/new-name"), ("/in", b"/in/sub/new"), ("/in", b"/in2/x"), ("/in", b"/archive/in/x")]
    ):
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, location, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, ?, ?, ?, 'done', 'd', ?, ?, ?, ?)",
            (f"u{n}", folder, f"r{n}".encode(), location, at, at, at, at),
        )
    conn.close()
    ledger = Ledger.open(path)
    try:
        assert ledger.prune(State.DONE, NOW - 30 * DAY, after=0, limit=100)[0] == 2
        assert _left(ledger) == {"r0", "r1"}  # /in2 only shares the first letters
    finally:
        ledger.close()


def test_the_row_that_recorded_a_left_sidecar_stays(tmp_path: Path) -> None:
    """A row whose file left its metadata sidecar in the inbox (syncd/left_sidecars.py) is
    what keeps a later file of that name from being sent with that sidecar's labels: were
    it pruned, the sidecar would apply again, silently."""
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    at = NOW - 40 * DAY
    for n in range(2):
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, location, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, '/in', ?, ?, 'done', 'd', ?, ?, ?, ?)",
            (f"u{n}", f"r{n}".encode(), f"/archive/r{n}".encode(), at, at, at, at),
        )
    conn.close()
    ledger = Ledger.open(path)
    try:
        left = next(r for r in ledger.rows() if r.relpath == "r0")
        sidecar = {"device": 1, "inode": 2, "size": 3, "mtime_ns": 4, "ctime_ns": 5}
        ledger.note_left_sidecar(left.id, {left_sidecars.KEY: sidecar})
        assert ledger.prune(State.DONE, NOW - 30 * DAY, after=0, limit=100)[0] == 1
        assert _left(ledger) == {"r0"}
    finally:
        ledger.close()
