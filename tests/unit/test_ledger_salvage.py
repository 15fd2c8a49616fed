"""`syncd ledger rebuild` salvages the finished rows a damaged ledger can still give (F25)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from syncd.errors import LedgerError
from syncd.ledger import Ledger, State, salvage
from syncd.ledger.salvage import rebuild

ROWS = 3000


def _ledger_with_history(path: Path) -> None:
    """3,000 rows: every third done (with a receipt naming it), failed, or still queued."""
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for i in range(ROWS):
        state = (State.DONE, State.FAILED, State.QUEUED)[i % 3]
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, location, state, destination, receipt,"
            " first_seen, changed_at, updated_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1, 1, ?)",
            (
                f"uuid-{i}",
                "/in",
                f"f{i:05}.txt".encode(),
                f"/archive/f{i:05}.txt".encode() if state != State.QUEUED else None,
                state,
                "lilt",
                json.dumps({"marker": f"receipt-of-{i:05}"}) if state == State.DONE else None,
                "HTTP 400" if state == State.FAILED else None,
            ),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _garble_the_page_holding(path: Path, marker: bytes) -> None:
    """Damage the table page that holds ``marker`` (a receipt: no index holds it)."""
    data = bytearray(path.read_bytes())
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    at = data.index(marker)
    start = at - at % page
    for i in range(start + 8, start + page):  # the cells and their pointers, not the page type
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_damaged_page_costs_its_rows_and_no_others(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    _ledger_with_history(path)
    _garble_the_page_holding(path, b"receipt-of-01500")
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert [p.name for p in rebuilt.moved] == ["ledger.sqlite3.broken-STAMP"]
    salvaged = rebuilt.salvaged
    assert salvaged is not None and salvaged.error is None
    assert 0 < salvaged.unreadable < 100
    finished = 2 * ROWS // 3
    assert finished - 100 < sum(salvaged.copied.values()) < finished
    assert set(salvaged.copied) == {"done", "failed"}
    assert "could not be read" in salvaged.describe()

    ledger = Ledger.open(path)
    try:
        assert ledger.integrity_check() == "ok"
        rows = {r.uuid: r for r in ledger.rows()}
        assert "uuid-1500" not in rows  # on the damaged page
        assert rows["uuid-0"].receipt == {"marker": "receipt-of-00000"}  # far from it
        assert rows["uuid-2997"].state == State.DONE
        assert not any(r.state == State.QUEUED for r in rows.values())  # still in the inbox
        counts = ledger.counts()  # kept by the triggers as the rows went in
        assert counts[State.DONE] + counts[State.FAILED] == len(rows)
        (requeued,) = ledger.requeue_failed([rows["uuid-1"].id])  # `syncd retry` still works
        assert requeued.state == State.QUEUED
    finally:
        ledger.close()


def test_a_ledger_that_cannot_be_opened_gives_nothing_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    _ledger_with_history(path)
    with open(path, "r+b") as f:
        f.write(b"\xa5" * 17)
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert rebuilt.salvaged is not None
    assert (
        rebuilt.salvaged.describe()
        == "nothing could be read from the damaged ledger (file is not a database)"
    )
    ledger = Ledger.open(path)
    try:
        assert ledger.rows() == []
    finally:
        ledger.close()


def test_no_ledger_yet_is_a_plain_new_one(tmp_path: Path) -> None:
    rebuilt = rebuild(tmp_path / "ledger.sqlite3", "STAMP", Ledger)
    assert rebuilt.moved == [] and rebuilt.salvaged is None
    assert (tmp_path / "ledger.sqlite3").exists()


def test_ids_far_apart_are_read_without_walking_the_gap(tmp_path: Path) -> None:
    """An id of 2**62 (a damaged row, or a ledger that jumped): the salvage jumps to the next
    id that exists instead of reading a thousand ids at a time up to it."""
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    for row_id in (*range(1, 51), 2**62):
        conn.execute(
            "INSERT INTO files (id, uuid, folder, relpath, location, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, ?, '/in', ?, x'2f61', 'done', 'd', 1, 1, 1, 1)",
            (row_id, f"u{row_id}", f"f{row_id}".encode()),
        )
    conn.close()
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert rebuilt.salvaged is not None and rebuilt.salvaged.copied == {"done": 51}


def test_rows_a_damaged_index_hides_are_read_from_the_table(tmp_path: Path) -> None:
    """The state index lost its entries for ids >= 10 (the table is intact): every row is
    still copied, since each range is also read through the table's own rowid tree."""
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    for i in range(50):
        conn.execute(
            "INSERT INTO files (uuid, folder, relpath, location, state, destination, first_seen,"
            " changed_at, updated_at, done_at) VALUES (?, '/in', ?, x'2f61', 'done', 'd', 1, 1, 1, 1)",
            (f"u{i}", f"f{i}".encode()),
        )
    conn.execute("DROP INDEX files_state_id")  # built partial, then declared whole
    conn.execute("CREATE INDEX files_state_id ON files(state, id) WHERE id < 10")
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX files_state_id ON files(state, id)'"
        " WHERE name = 'files_state_id'"
    )
    conn.execute("PRAGMA writable_schema=OFF")
    conn.close()
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert rebuilt.salvaged is not None and rebuilt.salvaged.copied == {"done": 50}


def test_rows_whose_bytes_no_scan_would_find_are_kept(tmp_path: Path) -> None:
    """A failed file `syncd retry` put back in the queue (its bytes in the failed folder),
    and an uploaded file whose archive move a crash interrupted: the rebuild dropped
    both; no scan of the inbox finds the first (it stayed in the failed folder, never
    uploaded), and the second was uploaded again."""
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path)
    for rel in ("retried.pdf", "uploaded.pdf", "waiting.pdf"):
        ledger.observe("/in", [rel], destination="lilt")
        row = ledger.active_for_path("/in", rel)
        assert row is not None
        ledger.promote(row.id)
    retried, uploaded = ledger.claim_next(), ledger.claim_next()
    assert retried is not None and uploaded is not None
    ledger.mark_failed(retried.id, error="HTTP 503", location="/failed/retried.pdf")
    ledger.requeue_failed([retried.id])
    ledger.mark_uploaded(uploaded.id, sha256="ab" * 32, receipt={"remote_id": "r"}, archive_target="/a/u.pdf")
    ledger.close()
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert rebuilt.salvaged is not None and rebuilt.salvaged.copied == {"queued": 1, "uploaded": 1}
    ledger = Ledger.open(path)
    try:
        rows = {r.relpath: r for r in ledger.rows()}
        assert set(rows) == {"retried.pdf", "uploaded.pdf"}  # waiting.pdf: the next scan finds it
        assert rows["retried.pdf"].current_path == "/failed/retried.pdf"
        assert (
            rows["uploaded.pdf"].state == State.UPLOADED and rows["uploaded.pdf"].archive_path == "/a/u.pdf"
        )
    finally:
        ledger.close()


class _Killed(BaseException):
    """SIGKILL, in process: nothing after it runs."""


def _kill_at_replace(monkeypatch: Any, nth: int) -> None:
    """The ``nth`` os.replace of the rebuild is where it dies: the first puts the marker
    in place, the next ones move the damaged ledger's files aside."""
    real, calls = os.replace, []

    def replace(a: Any, b: Any) -> None:
        calls.append(a)
        if len(calls) == nth:
            raise _Killed
        real(a, b)

    monkeypatch.setattr(salvage.os, "replace", replace)


def test_a_rebuild_killed_before_moving_the_ledger_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its marker, before the ledger moved: the next rebuild took the ledger
    still at the path for its own partial one and deleted it."""
    path = tmp_path / "ledger.sqlite3"
    _ledger_with_history(path)
    _kill_at_replace(monkeypatch, 2)
    with pytest.raises(_Killed):
        rebuild(path, "ONE", Ledger)
    monkeypatch.undo()
    with pytest.raises(LedgerError, match="a `syncd ledger rebuild` was interrupted"):
        Ledger.open(path)
    rebuilt = rebuild(path, "TWO", Ledger)
    assert rebuilt.resumed is not None and rebuilt.salvaged is not None
    assert rebuilt.salvaged.copied == {"done": 1000, "failed": 1000}
    assert not salvage.rebuilding_marker(path).exists()
    Ledger.open(path).close()  # the daemon opens it again


def test_a_rebuild_killed_between_the_ledger_and_its_wal_keeps_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after moving the ledger aside but not yet its WAL (the newest commits): the
    next rebuild deleted the WAL. It moves it on, and salvages from both."""
    path = tmp_path / "ledger.sqlite3"
    _ledger_with_history(path)
    keep = sqlite3.connect(path, isolation_level=None)  # holds the WAL open: not folded in
    keep.execute("PRAGMA wal_autocheckpoint = 0")
    keep.execute(
        "INSERT INTO files (uuid, folder, relpath, state, destination, first_seen, changed_at,"
        " updated_at) VALUES ('in-the-wal', '/in', 'wal.txt', 'done', 'lilt', 1, 1, 1)"
    )
    snapshot = tmp_path / "snap"  # the files as a crash left them, WAL included
    snapshot.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{path}{suffix}", f"{snapshot / path.name}{suffix}")
    keep.close()
    path = snapshot / path.name
    assert Path(f"{path}-wal").stat().st_size > 0
    _kill_at_replace(monkeypatch, 3)
    with pytest.raises(_Killed):
        rebuild(path, "ONE", Ledger)
    monkeypatch.undo()
    rebuilt = rebuild(path, "TWO", Ledger)
    assert rebuilt.salvaged is not None and rebuilt.salvaged.copied["done"] == 1001


def test_a_marker_cut_short_as_it_was_written_never_costs_the_ledger(tmp_path: Path) -> None:
    """A rebuild killed (or out of space) while it wrote its marker left it empty: the
    next rebuild read it as '.', took the ledger at the path for a partial one and
    deleted it. A marker that names no broken-* file beside the ledger is not trusted."""
    path = tmp_path / "ledger.sqlite3"
    _ledger_with_history(path)
    for junk in ("", "/etc/passwd", f"{path}.broken-x/../../etc"):
        salvage.rebuilding_marker(path).write_text(junk)
        assert salvage._named_in(salvage.rebuilding_marker(path), path) is None
    rebuilt = rebuild(path, "TWO", Ledger)
    assert rebuilt.resumed is None and rebuilt.salvaged is not None
    assert rebuilt.salvaged.copied == {"done": 1000, "failed": 1000}
    assert Path(f"{path}.broken-TWO").exists() and not salvage.rebuilding_marker(path).exists()
