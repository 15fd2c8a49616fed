from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from syncd.errors import LedgerError
from syncd.ledger import SCHEMA_VERSION, Ledger
from tests.conftest import FakeClock, note_stat, row_of


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    led = Ledger.open(tmp_path / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def _queue(ledger: Ledger, rel: str = "a.txt", folder: str = "/in") -> int:
    ledger.observe(folder, [rel], destination="d", labels=["x", "y"], category="SOURCE")
    row = ledger.active_for_path(folder, rel)
    assert row is not None
    note_stat(ledger, row.id, size=3, mtime_ns=1, inode=7)
    ledger.promote(row.id)
    return row.id


def test_durability_settings(ledger: Ledger) -> None:
    conn = ledger._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: Ledger.sync() syncs
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY: no journals in /var/tmp
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


class _Fsyncs:
    """Records which files os.fsync/os.fdatasync were called on, and what had been committed by then."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ledger = ledger
        self.calls: list[tuple[str, int]] = []
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._spy(getattr(os, name)))

    def _spy(self, real: Any) -> Any:
        def sync(fd: int) -> None:
            self.calls.append((os.readlink(f"/proc/self/fd/{fd}"), self.ledger._committed))
            real(fd)

        return sync

    def wal(self) -> list[int]:
        return [n for path, n in self.calls if path == f"{self.ledger.path}-wal"]


def test_durable_verbs_sync_the_wal_and_the_busy_path_does_not(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    row_id = _queue(ledger)
    fsyncs = _Fsyncs(ledger, monkeypatch)
    row = ledger.claim_next()
    assert row is not None and row.id == row_id
    ledger.checkpoint(row_id, {"part": 1})
    assert fsyncs.wal() == []  # committed only
    ledger.mark_uploaded(row_id, sha256="0" * 64, receipt={"remote_id": "r"})
    assert fsyncs.wal() == []  # made durable by the archive target's sync, before any move
    ledger.set_archive_target(row_id, "/archive/a")
    assert fsyncs.wal() == [ledger._committed]  # one fsync covers both commits
    ledger.mark_done(row_id, location="/archive/a")
    assert len(fsyncs.wal()) == 1
    ledger.sync()  # the done commit is not synced yet
    assert len(fsyncs.wal()) == 2
    ledger.sync()
    assert len(fsyncs.wal()) == 2  # everything is synced: no fsync


def test_group_commit_one_fsync_serves_many_writers(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads each make 50 durable commits; every commit returns only after an
    fsync that started after it, and the fsyncs are shared (fewer than the commits)."""
    fsyncs = _Fsyncs(ledger, monkeypatch)
    late: list[tuple[int, int]] = []
    real_sync = ledger.sync

    def sync(upto: int | None = None, point: str = "sync") -> None:
        real_sync(upto, point)
        covered = max(fsyncs.wal(), default=0)
        if upto is None or covered < upto:
            late.append((upto or -1, covered))

    monkeypatch.setattr(ledger, "sync", sync)

    def writer(n: int) -> None:
        for i in range(50):
            ledger.put_meta(f"w{n}", i)  # durable

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert late == []
    assert 0 < len(fsyncs.wal()) < 400


def test_observe_creates_one_active_row_per_path(ledger: Ledger) -> None:
    assert ledger.observe("/in", ["a", "b", "a"], destination="d") == 2
    assert ledger.observe("/in", ["a"], destination="d") == 0
    assert ledger.counts()["settling"] == 2
    row = ledger.active_for_path("/in", "a")
    assert row is not None and row.state == "settling" and row.size is None
    assert len(row.uuid) == 36


def test_full_lifecycle(ledger: Ledger, clock: FakeClock) -> None:
    row_id = _queue(ledger)
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == row_id
    assert claimed.state == "uploading" and claimed.attempts == 1
    assert claimed.labels == ("x", "y") and claimed.category == "SOURCE"
    assert ledger.claim_next() is None
    ledger.checkpoint(row_id, {"v": 1, "parts": {"1": "e"}})
    assert row_of(ledger, row_id).resume == {"v": 1, "parts": {"1": "e"}}
    ledger.mark_uploaded(row_id, sha256="ab" * 32, receipt={"remote_id": "k"})
    ledger.set_archive_target(row_id, "/arch/a.txt")
    ledger.mark_done(row_id, location="/arch/a.txt")
    row = ledger.get(row_id)
    assert row is not None and row.state == "done" and row.location == "/arch/a.txt"
    assert row.receipt == {"remote_id": "k"}
    # the path is free again: a new file with the same name is a new row
    assert ledger.observe("/in", ["a.txt"], destination="d") == 1


def test_retry_waits_until_due(ledger: Ledger, clock: FakeClock) -> None:
    row_id = _queue(ledger)
    ledger.claim_next()
    ledger.mark_retry(row_id, error="HTTP 503", at=clock() + 10)
    assert ledger.claim_next() is None
    assert ledger.next_due() == clock() + 10
    clock.advance(10)
    again = ledger.claim_next()
    assert again is not None and again.attempts == 2 and again.last_error == "HTTP 503"


def test_due_now_brings_forward_the_retries_of_the_named_destinations(
    ledger: Ledger, clock: FakeClock
) -> None:
    """A reload that changed a destination: its files' retries are due now. Not those of
    other destinations, not a wait for an unavailable folder, not a settling file."""
    ids = {name: _queue(ledger, f"{name}.txt") for name in ("fixed", "away", "later")}
    for _ in ids:
        assert ledger.claim_next() is not None
    ledger.mark_retry(ids["fixed"], error="connection refused", at=clock() + 600)
    ledger.mark_retry(ids["away"], error="folder unavailable: gone", at=clock() + 600)
    ledger.mark_retry(ids["later"], error="HTTP 503", at=clock() + 600)
    ledger._conn.execute("UPDATE files SET destination = 'other' WHERE id = ?", (ids["later"],))
    ledger.observe("/in", ["settling.txt"], destination="d")
    assert ledger.due_now([]) == 0
    assert ledger.due_now(["d"]) == 1
    assert row_of(ledger, ids["fixed"]).next_attempt_at == clock()
    assert ledger.claim_next(destinations=["d"]).id == ids["fixed"]
    assert ledger.claim_next() is None
    assert ledger.due_now(["d"]) == 0  # nothing left: no write


def test_claim_filters_paused_destinations(ledger: Ledger) -> None:
    _queue(ledger)
    assert ledger.claim_next(destinations=[]) is None
    assert ledger.claim_next(destinations=["other"]) is None
    assert ledger.claim_next(destinations=["d"]) is not None


def test_requeue_stale_keeps_resume(ledger: Ledger) -> None:
    row_id = _queue(ledger)
    ledger.claim_next()
    ledger.checkpoint(row_id, {"v": 1})
    assert ledger.requeue_stale() == 1
    row = ledger.get(row_id)
    assert row is not None and row.state == "queued" and row.resume == {"v": 1}


def test_a_crash_costs_an_attempt_only_to_an_upload_with_nothing_confirmed(ledger: Ledger) -> None:
    """A big file killed eight times on its way (each restart resuming its parts) then
    failed on one transient error; a file that crashes syncd whenever it is sent must
    still fail after max_attempts, not crash it for ever."""
    resumed, poison = _queue(ledger, "big.bin"), _queue(ledger, "poison.bin")
    for _ in range(3):
        ledger.claim_next()
        ledger.claim_next()
        ledger.checkpoint(resumed, {"parts": {"1": "etag"}})
        assert ledger.requeue_stale() == 2
    assert ledger.get(resumed).attempts == 0  # type: ignore[union-attr]
    assert ledger.get(poison).attempts == 3  # type: ignore[union-attr]


def test_supersede_starts_a_new_version(ledger: Ledger) -> None:
    row_id = _queue(ledger)
    row = ledger.claim_next()
    assert row is not None
    ledger.supersede(row, reason="changed")
    assert row_of(ledger, row_id).state == "vanished"
    new = ledger.active_for_path("/in", "a.txt")
    assert new is not None and new.id != row_id and new.state == "settling"


def test_requeue_failed(ledger: Ledger) -> None:
    row_id = _queue(ledger)
    ledger.claim_next()
    ledger.mark_failed(row_id, error="HTTP 400", location="/failed/a.txt")
    assert ledger.counts()["failed"] == 1
    rows = ledger.requeue_failed()
    assert [r.id for r in rows] == [row_id]
    row = ledger.get(row_id)
    assert row is not None and row.state == "queued" and row.attempts == 0
    assert row.current_path == "/failed/a.txt"
    # a new file at the old inbox path is independent of the retried one
    assert ledger.observe("/in", ["a.txt"], destination="d") == 1


def test_undecodable_paths_round_trip(ledger: Ledger) -> None:
    name = os.fsdecode(b"bad-\xff-name.txt")
    ledger.observe("/in", [name], destination="d")
    row = ledger.active_for_path("/in", name)
    assert row is not None and row.relpath == name
    assert "\\xff" in row.to_json()["relpath"]


def test_not_a_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="ledger rebuild"):
        Ledger.open(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer"):
        Ledger.open(path)


def test_readonly_open_of_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(tmp_path / "nope.sqlite3", readonly=True)


def test_meta_round_trip(ledger: Ledger) -> None:
    ledger.put_meta("daemon", {"pid": 1})
    ledger.put_meta("daemon", {"pid": 2})
    assert ledger.get_meta("daemon") == {"pid": 2}
    assert ledger.get_meta("missing", 5) == 5


def _grouped(ledger: Ledger) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for folder, state, n in ledger._conn.execute(
        "SELECT folder, state, COUNT(*) FROM files GROUP BY folder, state"
    ):
        out.setdefault(folder, {})[state] = n
    return out


def test_maintained_counts_agree_with_the_rows_through_every_verb(ledger: Ledger) -> None:
    """The counters `status` reads are kept by triggers: after every kind of change they
    equal a full GROUP BY of the table."""
    ids = [_queue(ledger, f"f{i}", folder=f"/in{i % 3}") for i in range(12)]
    ledger.observe("/in0", ["settling-1", "settling-2"], destination="d")
    for i, row_id in enumerate(ids):
        assert ledger.claim_next() is not None
        if i % 4 == 0:
            ledger.mark_uploaded(row_id, sha256="00" * 32, receipt={"remote_id": "r"})
            ledger.mark_done(row_id, location=f"/arch/{i}")
        elif i % 4 == 1:
            ledger.mark_failed(row_id, error="refused", location=None)
        elif i % 4 == 2:
            ledger.mark_retry(row_id, error="later", at=0.0)
        else:
            ledger.mark_vanished(row_id, reason="gone")
    ledger.requeue_failed()
    settling = ledger.active_for_path("/in0", "settling-1")
    assert settling is not None
    ledger.forget(settling.id)
    assert ledger.counts_by_folder() == _grouped(ledger)
    totals: dict[str, int] = {}
    for states in _grouped(ledger).values():
        for state, n in states.items():
            totals[state] = totals.get(state, 0) + n
    assert {k: v for k, v in ledger.counts().items() if v} == totals


def _schema_2_ledger(path: Path) -> None:
    from syncd.ledger import _MIGRATIONS, APPLICATION_ID

    conn = sqlite3.connect(path)
    for version in (1, 2):  # a ledger as schema 2 left it, with rows in it
        steps = _MIGRATIONS[version]
        for statement in steps.split(";") if isinstance(steps, str) else steps:
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    for i, state in enumerate(["settling", "settling", "done", "failed"]):
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, '/in', ?, ?, 'd', 0, 0, 0, ?)",
            (f"u{i}", f"f{i}".encode(), state, 0 if state == "done" else None),
        )
    conn.commit()
    conn.close()


def test_counts_are_built_for_a_ledger_from_an_older_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _schema_2_ledger(path)
    again = Ledger.open(path)
    try:
        assert again.counts_by_folder() == {"/in": {"settling": 2, "done": 1, "failed": 1}}
        assert again.counts()["settling"] == 2
    finally:
        again.close()


def test_done_today_is_counted_per_local_day(tmp_path: Path) -> None:
    import time as _time

    led = Ledger.open(tmp_path / "l.sqlite3", clock=_time.time)
    try:
        ids = [_queue(led, f"f{i}") for i in range(3)]
        for row_id in ids:
            assert led.claim_next() is not None
            led.mark_uploaded(row_id, sha256="00" * 32, receipt={"remote_id": "r"})
            led.mark_done(row_id)
        assert led.done_today() == 3
        assert led.done_today() == led.done_since(_time.mktime(_time.localtime()[:3] + (0,) * 5 + (-1,)))
    finally:
        led.close()


@pytest.mark.process
def test_naming_the_lock_holder_leaves_our_own_locks_alone(tmp_path: Path) -> None:
    """lock_holder reads /proc/locks: closing a descriptor of the -shm file would drop every
    POSIX lock this process holds on it (SQLite's read marks), and another connection
    could then checkpoint or reset the WAL under the daemon."""
    import subprocess
    import sys

    from syncd.ledger.writer import lock_holder

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path)
    try:
        ledger.observe("/in", ["a.txt"], destination="d")

        def ours() -> list[str]:
            """This process's locks on this ledger's files (other tests' threads in the same
            worker process may hold and drop locks on their own ledgers meanwhile)."""
            inodes = {f":{os.stat(f'{path}{s}').st_ino} " for s in ("", "-wal", "-shm")}
            table = Path("/proc/locks").read_text().splitlines()
            mine = [line for line in table if f" {os.getpid()} " in line]
            return sorted(line.split(":", 1)[1] for line in mine if any(i in line for i in inodes))

        with ledger._lock:
            ledger._conn.execute("BEGIN")
            ledger._conn.execute("SELECT COUNT(*) FROM files").fetchone()  # a read mark held
            held = ours()
            assert held
            assert lock_holder(path) is None  # our own locks are not another's
            code = "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None)"
            code += "; c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(30)"
            with subprocess.Popen(
                [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
            ) as other:
                try:
                    assert other.stdout is not None and other.stdout.readline().strip() == "locked"
                    assert lock_holder(path) == f"pid {other.pid}, python" or str(
                        lock_holder(path)
                    ).startswith(f"pid {other.pid}, python")
                    assert ours() == held
                finally:
                    other.kill()
            ledger._conn.execute("COMMIT")
    finally:
        ledger.close()


def test_a_ledger_that_cannot_be_opened_for_a_full_disk_is_not_called_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full state disk at start: SQLite cannot make the ledger's -shm file and says
    "disk I/O error". That was "unusable; run `syncd ledger rebuild`" with exit 4, which
    the unit never restarts, and the advice would have thrown a sound ledger away."""
    from syncd.errors import LedgerDiskFull
    from syncd.ledger import schema, writer

    Ledger.open(tmp_path / "ledger.sqlite3").close()

    def full(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(schema, "connect", full)
    monkeypatch.setattr(writer, "space_left", lambda path: 0)
    with pytest.raises(LedgerDiskFull, match="the disk holding it is full; the ledger itself is fine"):
        Ledger.open(tmp_path / "ledger.sqlite3")
    monkeypatch.setattr(writer, "space_left", lambda path: 1 << 30)
    with pytest.raises(LedgerError, match="run `syncd ledger rebuild`") as caught:
        Ledger.open(tmp_path / "ledger.sqlite3")
    assert not isinstance(caught.value, LedgerDiskFull)


def test_a_ledger_too_old_to_read_unmigrated_says_so_and_backs_up(tmp_path: Path) -> None:
    """Between `pip install --upgrade` and the restart that migrates it, `syncd status`
    on a schema-2 ledger ended in a traceback (no table counts); `ledger backup` too,
    leaving DEST.partial. Read-only views say the daemon upgrades it; a backup works."""
    from syncd.errors import LedgerUnreachable
    from syncd.ledger.backup import backup

    path = tmp_path / "old.sqlite3"
    _schema_2_ledger(path)
    with pytest.raises(LedgerUnreachable, match=r"older syncd \(schema 2\).*systemctl restart syncd"):
        Ledger.open(path, readonly=True)
    copy = backup(path, tmp_path / "copy.sqlite3")
    assert copy.ok and copy.rows == 4 and not list(tmp_path.glob("*.partial"))


@pytest.mark.process
@pytest.mark.parametrize("mode", [0o600, 0o644])
@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_wal_or_shm_file_the_daemons_user_cannot_open_is_not_called_damage(suffix: str, mode: int) -> None:
    """The daemon runs as its own user; a `-wal` or `-shm` beside the ledger is root's
    (a restore with `cp` as root, a stray copy). The start said the ledger "is unusable
    ... run `syncd ledger rebuild`", exit 4 (0600), or ended in a traceback, "attempt to
    write a readonly database", exit 1, restarted by the unit (a -shm of 0644), while
    `syncd ledger check` (as root) said ok and a forced rebuild would have dropped every
    unfinished row. Like a ledger file or directory out of reach, it is named, with who
    may not use it, and no rebuild."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to open the ledger as another user")
    uid = 4321
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        state = Path(top, "state")
        path = state / "ledger.sqlite3"
        Ledger.open(path).close()
        for p in (state, path):
            os.chown(p, uid, uid)
        stray = Path(f"{path}{suffix}")
        stray.write_bytes(b"")
        stray.chmod(mode)
        opener = (  # as the daemon's start: open, then a first write
            "import sys\nfrom syncd.ledger import Ledger\nledger = Ledger.open(sys.argv[1])\n"
            "ledger.put_meta('heartbeat', 1.0)\nledger.close()"
        )
        out = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            + [sys.executable, "-c", opener, str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            timeout=60,
        )
    assert out.returncode != 0
    assert "LedgerUnreachable" in out.stderr and f"its file {stray} is not writable" in out.stderr, out.stderr
    assert "run `syncd ledger rebuild`" not in out.stderr and "do not rebuild it" in out.stderr


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_symlink_in_place_of_a_ledger_file_is_not_chmodded_through(tmp_path: Path, suffix: str) -> None:
    """The state directory is the daemon's user's: a symlink it puts in place of the
    ledger's `-wal` or `-shm` (or the ledger) pointed root's next command (`syncd ledger
    rebuild`, `syncd status`) at a file of root's, which make_private then made 0600."""
    from syncd.ledger import make_private

    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    victim.chmod(0o644)
    target = Path(f"{path}{suffix}")
    target.unlink(missing_ok=True)
    target.symlink_to(victim)
    make_private(path)
    assert (victim.stat().st_mode & 0o777) == 0o644
    if suffix:  # a real file beside it is still brought to 0600
        path.chmod(0o644)
        make_private(path)
        assert (path.stat().st_mode & 0o777) == 0o600
