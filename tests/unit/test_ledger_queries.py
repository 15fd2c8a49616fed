"""The ledger's row type, its paging of rows, the indexes its queries use, and backups."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.cli import main
from syncd.errors import LedgerError
from syncd.ledger import ACTIVE_STATES, STATES, Ledger, State, backup
from tests.conftest import FakeClock


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    led = Ledger.open(tmp_path / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def _failed(ledger: Ledger, n: int, folder: str = "/in") -> list[int]:
    """``n`` rows moved to failed, among as many settling ones; their ids."""
    ledger.observe(folder, [f"f{i}" for i in range(2 * n)], destination="d")
    ids = [r.id for r in ledger.rows()][::2]
    for row_id in ids:
        ledger.mark_failed(row_id, error="refused", location=None)
    return ids


def test_states_are_a_str_enum(ledger: Ledger) -> None:
    assert STATES == (
        "settling",
        "queued",
        "uploading",
        "retrying",
        "uploaded",
        "done",
        "failed",
        "vanished",
        "skipped",
        "forgotten",
    )
    assert all(type(s) is str for s in STATES)  # command-line choices and metric labels
    assert set(ACTIVE_STATES) <= set(State)
    ledger.observe("/in", ["a"], destination="d")
    (row,) = ledger.rows()
    assert row.state is State.SETTLING and row.state == "settling"
    assert json.dumps(row.to_json()["state"]) == '"settling"'
    assert ledger.counts()["settling"] == 1 and ledger.rows(state=State.SETTLING) == [row]


def test_rows_pages_by_id(ledger: Ledger) -> None:
    failed = _failed(ledger, 5)
    assert [r.id for r in ledger.rows(state="failed")] == failed
    assert [r.id for r in ledger.rows(state="failed", limit=2)] == failed[:2]
    newest = ledger.rows(state="failed", limit=2, newest=True)
    assert [r.id for r in newest] == failed[-2:]  # the newest, oldest first
    older = ledger.rows(state="failed", limit=2, newest=True, before=newest[0].id)
    assert [r.id for r in older] == failed[1:3]
    assert [r.id for r in ledger.rows(state="failed", after=failed[2])] == failed[3:]
    assert ledger.rows(limit=0) == [] and len(ledger.rows(limit=3, newest=True)) == 3
    assert ledger.rows(folder="/elsewhere") == []
    with pytest.raises(ValueError):
        ledger.rows(limit=-1)


def _plans(ledger: Ledger, call: Callable[[], Any]) -> list[str]:
    """The query plans of the statements ``call`` runs (other than transaction control)."""
    real = ledger._conn
    seen: list[tuple[str, Any]] = []

    class Spy:
        def execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
            seen.append((sql, args))
            return real.execute(sql, args)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ledger, "_conn", Spy())
        call()
    return [
        " | ".join(r[3] for r in real.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        for sql, args in seen
        if not sql.startswith(("BEGIN", "COMMIT", "ROLLBACK"))
    ]


def test_queries_use_their_indexes(ledger: Ledger) -> None:
    """Partial indexes serve a query only if it repeats their terms (built from State here)."""
    _failed(ledger, 3)
    row = ledger.rows(state="settling")[0]
    expect: list[tuple[Callable[[], Any], str]] = [
        (lambda: ledger.rows(state="failed", limit=2, newest=True), "files_state_id (state=?)"),
        (lambda: ledger.active_for_path("/in", "f1"), "files_active_path (folder=? AND relpath=?)"),
        (lambda: ledger.active_paths("/in"), "files_active_path (folder=?)"),
        (
            lambda: ledger.active_paths("/in", "sub"),
            "files_active_path (folder=? AND relpath>? AND relpath<?)",
        ),
        (lambda: ledger.inode_busy(row), "files_inode (folder=? AND inode=?)"),
        (lambda: ledger.uploaded_copy("/in", "00", destination="d"), "files_sha256"),
        (
            lambda: ledger.observe("/in", ["f1"], destination="d"),  # already settling: due now
            "files_path (folder=? AND relpath=?)",
        ),
    ]
    for call, index in expect:
        plans = _plans(ledger, call)
        assert any(index in p and "TEMP B-TREE" not in p for p in plans), (index, plans)


def test_a_claim_reads_the_first_due_row_of_each_state_from_its_index(ledger: Ledger) -> None:
    """Not a sort of every waiting row per claim (which made a 2,000-file backlog
    claim at a millisecond each): each waiting state is read in order from files_state."""
    for i in range(20):
        ledger.observe("/in", [f"q{i}"], destination="d")
    for row in ledger.rows(state="settling"):
        ledger.promote(row.id)
    (plan,) = _plans(ledger, lambda: ledger.claim_next())
    assert plan.count("files_state (state=?)") == 2 and "files_state_id" not in plan, plan
    # a worker that may send to some destinations only: from files_waiting, by destination,
    # so the due rows of a destination that is down are not read past on every claim
    (plan,) = _plans(ledger, lambda: ledger.claim_next(["d", "down"]))
    assert plan.count("files_waiting (destination=? AND state=?") == 4, plan
    claimed = ledger.claim_next(["d"])
    assert claimed is not None and claimed.state == "uploading" and claimed.destination == "d"
    assert ledger.claim_next(["down"]) is None
    # past 100 destinations (SQLite takes 500 terms in a UNION): files_state, filtered
    many = [f"other{i}" for i in range(300)]
    (plan,) = _plans(ledger, lambda: ledger.claim_next(many))
    assert plan.count("files_state (state=?)") == 2, plan
    claimed = ledger.claim_next([*many, "d"])
    assert claimed is not None and claimed.destination == "d"


def test_backup_copies_the_ledger(ledger: Ledger, tmp_path: Path) -> None:
    _failed(ledger, 2)
    dest = tmp_path / "copy.sqlite3"
    made = backup(ledger.path, dest)
    assert made.ok and made.path == dest and made.rows == 4
    assert (dest.stat().st_mode & 0o777) == 0o600
    assert not dest.with_name("copy.sqlite3.partial").exists()
    with pytest.raises(FileExistsError):
        backup(ledger.path, dest)
    with pytest.raises(LedgerError, match="no ledger"):
        backup(tmp_path / "missing.sqlite3", tmp_path / "other.sqlite3")


def test_files_limit_shows_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEST_KEY", "cli-test-key-123")
    (tmp_path / "inbox").mkdir()
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(
        '[daemon]\nstate_dir = "state"\n\n[destinations.main]\ntype = "lilt"\n'
        'base_url = "http://127.0.0.1:9/lilt"\napi_key = "env:TEST_KEY"\n\n'
        '[[folders]]\npath = "inbox"\ndestination = "main"\n'
    )
    cfg.chmod(0o600)
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    try:
        failed = _failed(led, 3, folder=os.fspath(tmp_path / "inbox"))
    finally:
        led.close()
    assert main(["-c", str(cfg), "files", "--state", "failed", "--limit", "2", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == failed[-2:]
    assert main(["-c", str(cfg), "files", "--limit", "1", "--json"]) == 0
    assert [r["relpath"] for r in json.loads(capsys.readouterr().out)] == ["f5"]


def test_a_scan_of_a_sub_folder_reads_the_rows_below_it_only(ledger: Ledger) -> None:
    """A new directory's scan read every row of the folder (0.6 s and 39 MB at 200,000
    rows, for each mkdir); it needs those below the directory only."""
    paths = ["sub/a", "sub/deep/b", "sub0/c", "subdir/d", "su/e", "top", "\udcff\udcff/f"]
    ledger.observe("/in", paths, destination="d")
    assert ledger.active_paths("/in", "sub") == {"sub/a", "sub/deep/b"}
    assert ledger.active_paths("/in", "sub/deep/") == {"sub/deep/b"}
    assert ledger.active_paths("/in") == set(paths)  # odd bytes included
    for row in ledger.rows():
        ledger.mark_failed(row.id, error="refused", location=None)  # failed in place: still there
    assert set(ledger.kept_versions("/in", ["sub/a", "sub/deep/b", "elsewhere"])) == {"sub/a", "sub/deep/b"}
    assert set(ledger.kept_versions("/in", paths)) == set(paths)  # odd bytes included


def test_a_scan_reads_the_files_still_in_the_folder_not_every_archived_row(ledger: Ledger) -> None:
    """The kept versions were read through files_path, every finished row of the folder,
    archived ones included (most of a ledger: 2 s a rescan at a million rows, under the
    lock). They are read from two indexes that hold only files still in a folder, for the
    paths a scan walked."""
    ledger.observe("/in", ["kept", "archived", "renamed"], destination="d")
    rows = {r.relpath: r for r in ledger.rows()}
    for row in rows.values():
        ledger.promote(row.id)
        assert ledger.claim_next() is not None
        ledger.mark_uploaded(row.id, sha256="ab" * 32, receipt={})
    ledger.set_location(rows["renamed"].id, "/in/renamed-later")
    ledger.mark_done(rows["kept"].id)
    ledger.mark_done(rows["renamed"].id)
    ledger.set_archive_target(rows["archived"].id, "/archive/archived")
    ledger.mark_done(rows["archived"].id, location="/archive/archived")
    walked = ["kept", "archived", "renamed", "renamed-later"]
    plans = _plans(ledger, lambda: ledger.kept_versions("/in", walked))
    assert len(plans) == 2 and "files_kept (" in plans[0] and "files_kept_moved (" in plans[1], plans
    assert set(ledger.kept_versions("/in", walked)) == {"kept", "renamed-later"}


def test_a_scan_of_a_folder_that_archives_its_files_asks_for_no_kept_version(ledger: Ledger) -> None:
    """Asking for the kept versions of every batch of walked paths made the scan of
    100,000 new files a fifth slower; a folder with none kept is asked once."""
    ledger.observe("/in", ["a", "b"], destination="d")
    rows = {r.relpath: r for r in ledger.rows()}
    for row in rows.values():
        ledger.promote(row.id)
        assert ledger.claim_next() is not None
        ledger.mark_uploaded(row.id, sha256="ab" * 32, receipt={})
    ledger.set_archive_target(rows["a"].id, "/archive/a")
    ledger.mark_done(rows["a"].id, location="/archive/a")
    assert not ledger.any_kept("/in")  # archived, or still on its way
    ledger.set_location(rows["b"].id, "/in/b-renamed")
    ledger.mark_done(rows["b"].id)  # kept under the name it got during its upload
    assert ledger.any_kept("/in") and not ledger.any_kept("/in2") and not ledger.any_kept("/i")
