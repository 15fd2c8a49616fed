"""`syncd ledger forget --folder PATH`: the files of a folder the configuration lost for
good stop waiting in the ledger, and stay where they are.

In-process (``main(argv)``) on real folders and a real ledger, as the other CLI tests; a
running daemon is stood in for by holding the state directory's lock and writing what
the daemon writes to the ledger (its heartbeat and the configuration it applied).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from syncd import scanner
from syncd.ledger import Ledger, Row, State
from syncd.lock import StateLock
from syncd.settle import Settler
from tests.conftest import FakeClock, make_folder, row_of
from tests.unit.test_cli_operator import (
    GOOD,
    _record_config,
    add_row,
    cfg,
    daemon_lock,
    heartbeat,
    ledger_of,
    run,
)

__all__ = ["cfg", "daemon_lock"]  # fixtures

FOLDER_AWAY = "folder unavailable: it is no longer configured"
TWO_FOLDERS = (
    GOOD
    + """
[[folders]]
path = "old"
destination = "main"
settle_seconds = 5
archive_dir = "old-archive"
"""
)


def _waiting(ledger: Ledger, root: Path) -> dict[str, Row]:
    """Files of ``root`` on their way, one per active state but ``uploaded``, as a reload that
    removed the folder leaves them (a crash left the uploading one, with syncd stopped)."""
    root.mkdir(exist_ok=True)
    for name in ("settling.txt", "queued.txt", "retrying.txt", "uploading.txt", "done.txt"):
        (root / name).write_bytes(name.encode())
    ledger.observe(os.fspath(root), ["settling.txt"], destination="main")
    settling = ledger.active_for_path(os.fspath(root), "settling.txt")
    assert settling is not None
    retrying = add_row(ledger, root, "retrying.txt")
    ledger.mark_retry(retrying.id, error=FOLDER_AWAY, at=time.time() + 300, count=False)
    uploading = add_row(ledger, root, "uploading.txt")
    done = add_row(ledger, root, "done.txt")
    ledger.mark_uploaded(done.id, sha256="ab" * 32, receipt={"remote_id": "r1"})
    ledger.mark_done(done.id, location=os.fspath(root.parent / "old-archive" / "done.txt"))
    queued = add_row(ledger, root, "queued.txt")
    ledger.requeue_now(queued.id, reason="interrupted")
    made = {
        "settling": settling,
        "queued": queued,
        "retrying": retrying,
        "uploading": uploading,
        "done": done,
    }
    return {name: row_of(ledger, row.id) for name, row in made.items()}


def _contents(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_forget_retires_the_waiting_files_of_a_removed_folder_and_leaves_them_where_they_are(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload removed a folder while files of it waited: `status` listed it for ever
    ("not in the configuration: its 4 file(s) on their way wait for it") and no command
    cleared them. Now they end `forgotten`, the files untouched, and status stops listing
    the folder."""
    old = cfg.parent / "old"
    ledger = ledger_of(cfg)
    rows = _waiting(ledger, old)
    ledger.close()
    before = _contents(old)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "problem: not in the configuration" in out

    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 0, err
    assert f"forgot 4 file(s) of '{old}'" in out, out
    assert "1 settling" in out and "1 queued" in out and "1 retrying" in out and "1 uploading" in out
    assert "the files were left where they are: nothing was deleted or moved" in out
    assert _contents(old) == before  # nothing deleted, moved or changed

    ledger = ledger_of(cfg)
    try:
        for name, row in rows.items():
            now = row_of(ledger, row.id)
            assert now.state == (State.DONE if name == "done" else State.FORGOTTEN), name
            if name != "done":
                assert now.next_attempt_at is None and now.resume is None
                assert "syncd ledger forget" in (now.last_error or "")
        # the counters status reads moved in the same transaction
        assert ledger.counts_by_folder()[os.fspath(old)] == {"forgotten": 4, "done": 1}
        assert ledger.counts()["forgotten"] == 4
    finally:
        ledger.close()
    StateLock(cfg.parent / "state").acquire()  # the command let go of the lock (raises if not)

    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "not in the configuration" not in out and str(old) not in out, out
    assert "4 forgotten" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    assert data["states"]["forgotten"] == 4
    assert [f["path"] for f in data["folders"]] == [os.fspath(cfg.parent / "inbox")]
    code, out, _ = run(capsys, "-c", str(cfg), "files", "--state", "forgotten")
    assert code == 0 and out.count("forgotten") == 4, out
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(old / "queued.txt"))
    assert code == 0 and f"ledger row #{rows['queued'].id}" in out and "forgotten" in out, out
    assert "uploaded as a new file" in out and "waits in the ledger" not in out
    # again: nothing left on its way
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 0 and "nothing to forget" in out, out


def test_forget_is_refused_for_a_watched_folder_or_one_the_ledger_never_saw(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    queued = add_row(ledger, inbox, "a.txt")
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(inbox))
    assert code == 2 and f"'{inbox}' is a watched folder" in err and "forgot" not in out, err
    # spelled through a symlink, or relative with a trailing slash: the same folder
    link = cfg.parent / "link"
    link.symlink_to(inbox)
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(link))
    assert code == 2 and "is a watched folder" in err
    nowhere = cfg.parent / "never-watched"
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(nowhere))
    assert code == 2 and f"the ledger has no file of '{nowhere}'" in err, err
    ledger = ledger_of(cfg)
    try:
        assert row_of(ledger, queued.id).state == State.UPLOADING
    finally:
        ledger.close()


def test_forget_dry_run_says_what_it_would_do_and_changes_nothing(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = cfg.parent / "old"
    ledger = ledger_of(cfg)
    rows = _waiting(ledger, old)
    ledger.close()
    monkeypatch.chdir(cfg.parent)  # PATH relative to the current directory, as `folder add` takes it
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", "old/", "--dry-run")
    assert code == 0, err
    assert f"would forget 4 file(s) of '{old}'" in out and "Nothing was changed" in out, out
    ledger = ledger_of(cfg)
    try:
        assert [row_of(ledger, r.id).state for r in rows.values()] == [r.state for r in rows.values()]
        assert "forgotten" not in ledger.counts_by_folder()[os.fspath(old)]
    finally:
        ledger.close()


def test_while_the_daemon_runs_forget_leaves_what_a_worker_holds_and_waits_for_a_reload(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    """With a daemon running, the rows a worker may hold (uploading, or uploaded with the
    archive move under way) are left alone and named (exit 1); and a folder the config
    file lost but the running daemon still watches (no reload yet) is refused."""
    old = cfg.parent / "old"
    cfg.write_text(TWO_FOLDERS)
    _record_config(cfg)  # the running daemon applied a config that has "old"
    ledger = ledger_of(cfg)
    uploaded = add_row(ledger, old, "uploaded.txt")
    ledger.mark_uploaded(uploaded.id, sha256="cd" * 32, receipt={"remote_id": "r2"})
    rows = _waiting(ledger, old)
    heartbeat(ledger)
    ledger.close()
    cfg.write_text(GOOD)  # removed from the file, not reloaded yet
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 2 and f"the running syncd still watches '{old}'" in err and "syncd reload" in err, err

    _record_config(cfg)  # reloaded
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 1, err
    assert f"forgot 3 file(s) of '{old}'" in out, out
    assert f"left 2 file(s) of '{old}' alone (1 uploading, 1 uploaded)" in err, err
    # an uploaded file of a folder the daemon no longer has is never archived while it runs:
    # "run this again once they are done" sent the operator round for ever
    assert "Uploaded ones wait for their folder for as long as syncd runs" in err, err
    assert "with syncd stopped to retire them" in err, err
    ledger = ledger_of(cfg)
    try:
        states = {name: row_of(ledger, r.id).state for name, r in rows.items()}
        assert states == {
            "settling": State.FORGOTTEN,
            "queued": State.FORGOTTEN,
            "retrying": State.FORGOTTEN,
            "uploading": State.UPLOADING,
            "done": State.DONE,
        }
        assert row_of(ledger, uploaded.id).state == State.UPLOADED
    finally:
        ledger.close()


def test_a_forgotten_row_is_never_taken_up_again_and_its_path_takes_a_new_row(tmp_path: Path) -> None:
    """What the daemon does with waiting rows (claim, promote, wake a folder that is back,
    requeue, reroute, rein in a stepped clock) leaves a forgotten row forgotten; a file seen
    at its path again is a new row."""
    clock = FakeClock()
    ledger = Ledger.open(tmp_path / "ledger.sqlite3", clock=clock)
    try:
        root = "/srv/old"
        ledger.observe(root, ["s.txt", "q.txt", "r.txt"], destination="d")
        ids = {r.relpath: r.id for r in ledger.rows()}
        ledger.promote_many([(ids["q.txt"], None), (ids["r.txt"], None)])
        claimed = ledger.claim_next()
        assert claimed is not None
        ledger.mark_retry(claimed.id, error=FOLDER_AWAY, at=clock() + 300, count=False)
        gone = ledger.forget_folder(root)
        assert gone.states == {"settling": 1, "queued": 1, "retrying": 1} and gone.total == 3
        clock.advance(3600)
        assert ledger.claim_next() is None
        ledger.promote(ids["s.txt"])  # a settle tick that read the row before it was forgotten
        ledger.set_due([(ids["s.txt"], clock())])
        assert ledger.folder_back(root) == 0
        assert ledger.requeue_stale() == 0 and ledger.repoint("d", "e") == 0
        ledger.rein_in(300, 300)
        ledger.mark_retry(claimed.id, error="late", at=clock(), count=False)
        ledger.requeue_now(claimed.id, reason="interrupted")
        assert {r.state for r in ledger.rows()} == {State.FORGOTTEN}
        assert ledger.observe(root, ["s.txt", "q.txt"], destination="d") == 2
        assert ledger.counts_by_folder()[root] == {"forgotten": 3, "settling": 2}
    finally:
        ledger.close()


def test_a_folder_configured_again_uploads_its_forgotten_files_as_new_files(tmp_path: Path) -> None:
    """The folder comes back to the config: its scan ledgers every file again (a forgotten
    row is no finished version: not "kept", not skipped) and the settle stage queues them."""
    clock = FakeClock()
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    try:
        folder = make_folder(tmp_path, "old", settle_seconds=0.0)
        for name in ("a.txt", "b.txt"):
            (folder.path / name).write_bytes(name.encode())
        root = os.fspath(folder.path)
        assert scanner.scan_folder(ledger, folder) == 2
        settler = Settler(ledger, lambda: {root: folder}, clock=clock)
        assert settler.tick() == 2  # queued (settle_seconds = 0); then the folder left the config
        first = {r.relpath: r.id for r in ledger.rows()}
        assert ledger.forget_folder(root).total == 2
        assert scanner.scan_folder(ledger, folder) == 2  # configured again: found again
        clock.advance(1)
        assert settler.tick() == 2
        new = [r for r in ledger.rows() if r.state == State.QUEUED]
        assert sorted(r.relpath for r in new) == ["a.txt", "b.txt"]
        assert not {r.id for r in new} & set(first.values())
        assert all(row_of(ledger, i).state == State.FORGOTTEN for i in first.values())
    finally:
        ledger.close()


def test_a_rebuild_keeps_the_forgotten_rows(tmp_path: Path) -> None:
    """`syncd ledger rebuild` copies the rows of finished files: a forgotten one is one (its
    story is over), so `files` and `explain` go on knowing what became of it."""
    from syncd.ledger.salvage import rebuild

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path)
    ledger.observe("/srv/old", ["a.txt", "b.txt"], destination="d")
    assert ledger.forget_folder("/srv/old").total == 2
    ledger.close()
    rebuilt = rebuild(path, "STAMP", Ledger)
    assert rebuilt.salvaged is not None and rebuilt.salvaged.copied == {"forgotten": 2}
    ledger = Ledger.open(path)
    try:
        assert ledger.counts_by_folder() == {"/srv/old": {"forgotten": 2}}
    finally:
        ledger.close()


def test_a_reload_that_configures_the_folder_again_before_the_write_wins(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command read the running daemon's configuration (no "old" in it); a reload that
    puts "old" back is applied, and its scan of "old" finds the files' rows still on their
    way, before the command writes. The write must see that reload: forgetting the rows
    then left the files of a watched folder unledgered until the next periodic rescan (5
    minutes by default), and said it forgot files of a folder the configuration no longer has."""
    old = cfg.parent / "old"
    ledger = ledger_of(cfg)
    rows = _waiting(ledger, old)
    heartbeat(ledger)
    ledger.close()
    _record_config(cfg)  # the running daemon's configuration: no "old"
    real = Ledger.forget_folder

    def reload_first(self: Ledger, *args: object, **kwargs: object) -> object:
        cfg.write_text(TWO_FOLDERS)  # "old" is put back and reloaded meanwhile
        _record_config(cfg)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "forget_folder", reload_first)
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 2 and f"the running syncd watches {quoted(old)} again" in err, (code, out, err)
    assert "forgot" not in out
    ledger = ledger_of(cfg)
    try:
        assert [row_of(ledger, r.id).state for r in rows.values()] == [r.state for r in rows.values()]
    finally:
        ledger.close()


def quoted(path: Path) -> str:
    return f"'{path}'"


def test_forget_is_refused_while_an_older_syncd_runs_on_the_ledger(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    """A syncd of the previous version still runs (the package was upgraded, the service not
    restarted yet): its ledger is at the schema it knows. Forgetting upgraded the schema under
    it and wrote rows in a state it cannot read (`State('forgotten')` raised in it, and it
    refused the ledger at its next start if it was not the upgraded one). Refused: restart
    it first."""
    import sqlite3

    from syncd.ledger import SCHEMA_VERSION

    old = cfg.parent / "old"
    ledger = ledger_of(cfg)
    rows = _waiting(ledger, old)
    heartbeat(ledger)
    ledger.close()
    _record_config(cfg)
    path = cfg.parent / "state" / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:  # as the running (older) syncd left it
        conn.execute("ALTER TABLE files DROP COLUMN ctime_ns")  # schema 9's
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    conn.close()
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old))
    assert code == 2 and "older syncd" in err and "restart" in err, (code, out, err)
    assert "forgot" not in out
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1
    conn.close()
    ledger = ledger_of(cfg)  # (the daemon's restart on this version upgrades it)
    try:
        assert [row_of(ledger, r.id).state for r in rows.values()] == [r.state for r in rows.values()]
    finally:
        ledger.close()
    # --dry-run only reads: it answers
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "forget", "--folder", str(old), "--dry-run")
    assert code == 0 and "would forget" in out, err
