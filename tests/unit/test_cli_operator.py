"""The CLI's rough edges an operator ran into (issue 11), each pinned down.

In-process (``main(argv)``) on real files and a real ledger; a running daemon
is stood in for by holding the state directory's lock and writing what the
daemon writes to the ledger's kv table (its heartbeat and progress snapshot).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import config as configmod
from syncd import progress, scanner
from syncd.cli import main
from syncd.commands import configure
from syncd.commands import status as statusmod
from syncd.errors import ConfigError
from syncd.ledger import CONFIG_KEY, Ledger, Row
from syncd.lock import StateLock
from tests.conftest import note_stat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_KEY", "cli-test-key-123")
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "syncd.toml"
    path.write_text(GOOD)
    path.chmod(0o600)
    return path


GOOD = """
[daemon]
state_dir = "state"

[destinations.main]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "env:TEST_KEY"

[[folders]]
path = "inbox"
destination = "main"
labels = ["legal"]
settle_seconds = 5
archive_dir = "archive"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def ledger_of(cfg: Path) -> Ledger:
    return Ledger.open(cfg.parent / "state" / "ledger.sqlite3")


def add_row(ledger: Ledger, root: Path, rel: str, *, size: int = 1) -> Row:
    ledger.observe(os.fspath(root), [rel], destination="main")
    row = ledger.active_for_path(os.fspath(root), rel)
    assert row is not None
    note_stat(ledger, row.id, size=size, mtime_ns=1, inode=row.id + 100)
    ledger.promote(row.id)
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == row.id
    return claimed


def failed_row(
    ledger: Ledger, root: Path, rel: str, error: str = "gave up after 8 attempts: HTTP 503"
) -> Row:
    """A row that failed where it was (no failed_dir)."""
    row = add_row(ledger, root, rel)
    ledger.mark_failed(row.id, error=error, location=None)
    return row


@pytest.fixture
def daemon_lock(cfg: Path) -> Iterator[StateLock]:
    """The state directory's lock held as the running daemon holds it (pid: this process)."""
    lock = StateLock(cfg.parent / "state")
    lock.acquire()
    yield lock
    lock.release()


def heartbeat(ledger: Ledger, **extra: Any) -> None:
    now = time.time()
    ledger.put_meta(
        "daemon",
        {
            "pid": os.getpid(),
            "started_at": now - 60,
            "heartbeat": now,
            "status": "3 queued, 4 uploading, 15 done today",
            "problems": [],
            "destinations": {},
            **extra,
        },
    )


# -- status and files with a broken config ----------------------------------------------------


def _record_config(cfg: Path) -> None:
    """What the daemon records at start and at every applied reload (runtime.record_config)."""
    from syncd.runtime import record_config

    ledger = ledger_of(cfg)
    try:
        record_config(ledger, configmod.load(cfg))
    finally:
        ledger.close()


def test_status_and_files_work_with_a_broken_config(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = ledger_of(cfg)
    row = add_row(ledger, cfg.parent / "inbox", "a.txt")
    ledger.mark_failed(row.id, error="HTTP 400: refused", location=None)
    ledger.close()
    _record_config(cfg)
    record = ledger_of(cfg).get_meta(CONFIG_KEY)
    assert record["folders"][0]["path"] == os.fspath(cfg.parent / "inbox")
    assert "cli-test-key-123" not in json.dumps(record) and "base_url" not in json.dumps(record)

    # a reload the daemon refused: the file no longer validates
    cfg.write_text(GOOD.replace("settle_seconds = 5", "settle_seconds = -1"))
    assert run(capsys, "-c", str(cfg), "check")[0] == 2
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0, err
    assert (
        "warning: the config" in err
        and "is broken (folders[0].settle_seconds: must be >= 0" in err
        and "last applied" in err
    )
    assert f"'{cfg.parent / 'inbox'}' -> main: 1 failed" in out
    code, out, err = run(capsys, "-c", str(cfg), "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["config"]["ok"] is False and data["states"]["failed"] == 1
    assert [d["name"] for d in data["destinations"]] == ["main"]
    code, out, err = run(capsys, "-c", str(cfg), "files")
    assert code == 0 and "a.txt" in out and "HTTP 400: refused" in out and "is broken" in err

    # not even TOML any more: the state_dir line still finds the ledger
    cfg.write_text(GOOD.replace("[daemon]", "[daemon").replace('"state"', '"./state"'))
    code, out, err = run(capsys, "-c", str(cfg), "files", "--state", "failed")
    assert code == 0 and "a.txt" in out and "invalid TOML" in err

    # no record of an applied config (a ledger from an older daemon): the ledger's folders
    ledger = ledger_of(cfg)
    ledger._conn.execute("DELETE FROM kv WHERE key = 'config'")
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "the folders its rows name" in err and "1 failed" in out


def test_a_broken_config_without_a_ledger_is_still_an_error(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg.write_text(GOOD.replace("settle_seconds = 5", "settle_seconds = -1"))
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 2 and "folders[0].settle_seconds" in err


# -- folder add ---------------------------------------------------------------------------------


def test_folder_add_validates_before_writing_and_shows_the_absolute_path(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_KEY")  # an admin shell without the service's environment
    work = cfg.parent / "work"
    (work / "scans").mkdir(parents=True)
    monkeypatch.chdir(work)
    code, out, err = run(
        capsys, "-c", str(cfg), "folder", "add", "scans", "-d", "main", "--archive-dir", "done"
    )
    assert code == 0, err
    assert f"added folder '{work / 'scans'}' ('scans' from the current directory)" in out
    text = cfg.read_text()
    assert f'path = "{work / "scans"}"' in text and f'archive_dir = "{work / "done"}"' in text
    assert "error" not in err
    # an invalid edit is refused before anything is written
    before = cfg.read_bytes()
    code, out, err = run(capsys, "-c", str(cfg), "folder", "add", "other", "-d", "nope")
    assert code == 2 and "folders[2].destination" in err and "added" not in out
    assert cfg.read_bytes() == before
    code, out, err = run(capsys, "-c", str(cfg), "folder", "add", "missing", "-d", "main")
    assert code == 0 and "does not exist yet" in out


# -- explain -------------------------------------------------------------------------------------


def test_explain_archived_failed_watched_and_missing(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inbox, archive = cfg.parent / "inbox", cfg.parent / "archive"
    failed_dir = cfg.parent / "state" / "failed" / "inbox"

    def explain(p: Path, code: int = 0) -> str:
        got, out, _ = run(capsys, "-c", str(cfg), "explain", str(p))
        assert got == code, out
        return out

    ledger = ledger_of(cfg)
    done = add_row(ledger, inbox, "sub/a.txt")
    ledger.mark_uploaded(done.id, sha256="ab" * 32, receipt={"remote_id": "remote-777"})
    archive.joinpath("sub").mkdir(parents=True)
    (archive / "sub" / "a.txt").write_bytes(b"x")
    ledger.mark_done(done.id, location=str(archive / "sub" / "a.txt"))
    bad = add_row(ledger, inbox, "b.txt")
    failed_dir.mkdir(parents=True)
    (failed_dir / "b.txt").write_bytes(b"y")
    ledger.mark_failed(
        bad.id, error="PermanentError: HTTP 413: too large", location=str(failed_dir / "b.txt")
    )
    ledger.close()

    text = explain(archive / "sub" / "a.txt")
    assert "is not uploaded" not in text
    assert f"ledger row #{done.id}" in text and "uploaded to 'main'" in text
    assert "remote id: remote-777" in text and "archived" in text
    text = explain(inbox / "sub" / "a.txt")  # gone from the inbox, known to the ledger
    assert "archived" in text and str(archive / "sub" / "a.txt") in text
    text = explain(failed_dir / "b.txt")
    assert "failed: PermanentError: HTTP 413: too large" in text
    assert f"syncd retry {bad.id}" in text
    text = explain(inbox / "b.txt")
    assert "failed: PermanentError: HTTP 413: too large" in text
    text = explain(inbox)
    assert "is a watched folder -> destination 'main'" in text
    assert "not inside any watched folder" not in text
    (inbox / "sub").mkdir(exist_ok=True)
    assert "a sub-folder" in explain(inbox / "sub")
    assert "no such file" in explain(inbox / "nothing-here.txt", 2)
    assert "no such file" in explain(cfg.parent / "nowhere" / "x.txt", 2)


# -- init and check ------------------------------------------------------------------------------


def test_init_under_etc_writes_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert configure.is_system_path(Path("/etc/syncd/config.toml"))
    assert not configure.is_system_path(Path("/etcetera/syncd.toml"))
    etc = tmp_path / "etc"
    monkeypatch.setattr(configure, "SYSTEM_CONFIG_DIR", str(etc))
    monkeypatch.setenv("SYNCD_CONFIG", str(etc / "syncd" / "config.toml"))
    code, out, err = run(capsys, "init")
    assert code == 0, err
    written = configmod.load(etc / "syncd" / "config.toml")
    assert str(written.daemon.state_dir) == "/var/lib/syncd"
    (folder,) = written.folders
    assert str(folder.path) == "/srv/syncd/inbox/demo"
    assert str(folder.archive_dir) == "/srv/syncd/archive/demo"
    assert str(folder.failed_dir) == "/srv/syncd/failed/demo"
    assert not any(str(p).startswith(str(etc)) for p in (written.daemon.state_dir, folder.path))
    assert "absolute paths" in out


def test_fresh_init_then_check_warns_about_the_missing_inbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.toml"
    assert run(capsys, "init", str(path))[0] == 0
    code, out, err = run(capsys, "-c", str(path), "check")
    assert code == 0, out + err
    assert f"warning: folders[0].path: '{tmp_path / 'inbox'}' does not exist yet" in out
    assert "relative paths" not in out


# -- retry ---------------------------------------------------------------------------------------


def test_retry_unknown_ids_and_permanent_refusals(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    refused = failed_row(ledger, inbox, "refused.txt", "PermanentError: HTTP 400: bad category")
    tired = failed_row(ledger, inbox, "tired.txt")
    busy = add_row(ledger, inbox, "busy.txt")
    ledger.close()

    code, out, err = run(capsys, "-c", str(cfg), "retry", "999")
    assert code == 1 and "#999: no such ledger row" in err
    code, out, err = run(capsys, "-c", str(cfg), "retry", str(busy.id))
    assert code == 1 and f"#{busy.id} is uploading, not a failed file" in err
    code, out, err = run(capsys, "-c", str(cfg), "retry", "--failed")
    assert code == 0
    assert f"requeued #{tired.id}" in out and f"requeued #{refused.id}" not in out
    assert "skipped 1 file(s) the service refused for good" in out and f"#{refused.id}" in out
    code, out, err = run(capsys, "-c", str(cfg), "retry", "--failed")
    assert code == 0 and "nothing requeued" in out and "skipped 1" in out
    code, out, err = run(capsys, "-c", str(cfg), "retry", "--failed", "--all")
    assert code == 0 and f"requeued #{refused.id}" in out
    ledger = ledger_of(cfg)
    assert ledger.counts()["failed"] == 0
    ledger.close()


def test_retry_leaves_failed_a_file_whose_path_has_a_newer_version(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that failed in place and was then replaced: its path has a new, active row.
    Requeueing the old row would put two active rows on one path (the ledger refuses it);
    the rest of the failed files are still requeued, and the old one is named."""
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    old = failed_row(ledger, inbox, "a.txt")
    other = failed_row(ledger, inbox, "b.txt")
    ledger.observe(os.fspath(inbox), ["a.txt"], destination="main")  # the new version, settling
    ledger.close()

    code, out, err = run(capsys, "-c", str(cfg), "retry", "--failed")
    assert code == 0, err
    assert f"requeued #{other.id}" in out and f"#{old.id} left failed" in err
    code, out, err = run(capsys, "-c", str(cfg), "retry", str(old.id))
    assert code == 1 and f"#{old.id} left failed" in err and "nothing requeued" in out
    ledger = ledger_of(cfg)
    assert ledger.get(old.id).state == "failed" and ledger.get(other.id).state == "queued"
    ledger.close()


def test_retry_of_a_file_whose_destination_is_gone_sends_it_where_its_folder_goes_now(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file failed on destination "old"; a reload moved its folder to "main" and removed
    "old". `syncd retry` said "requeued" and the file waited for "old" for ever, with
    nothing in the log or `syncd status`. It now goes with the folder's destination and
    labels, and the command says so; a destination that `replaces` "old" takes it over."""
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    moved = failed_row(ledger, inbox, "moved.txt")
    kept = failed_row(ledger, inbox, "kept.txt")
    ledger._conn.execute("UPDATE files SET destination = 'old', labels = '[]' WHERE id IN (?, ?)",
                         (moved.id, kept.id))  # fmt: skip
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "retry", str(moved.id))
    assert code == 0, err
    assert (
        f"requeued #{moved.id}" in out and "for 'main', its folder's ('old' is no longer configured)" in out
    )
    ledger = ledger_of(cfg)
    row = ledger.get(moved.id)
    assert (row.state, row.destination, row.labels, row.resume) == ("queued", "main", ("legal",), None)
    ledger.close()
    cfg.write_text(GOOD.replace('api_key = "env:TEST_KEY"', 'api_key = "env:TEST_KEY"\nreplaces = ["old"]'))
    code, out, err = run(capsys, "-c", str(cfg), "retry", str(kept.id))
    assert code == 0 and "no longer configured" not in out, out
    ledger = ledger_of(cfg)
    assert ledger.get(kept.id).destination == "old"  # the daemon hands it over (replaces)
    ledger.close()


def test_explain_names_the_destination_a_waiting_file_goes_to_and_an_uncounted_failure(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload moved the folder to another destination while a file waited: explain said
    the folder's new destination only, and "attempt 0 failed" for a try not counted."""
    inbox = cfg.parent / "inbox"
    (inbox / "w.txt").write_bytes(b"w")
    ledger = ledger_of(cfg)
    row = add_row(ledger, inbox, "w.txt")
    ledger.mark_retry(row.id, error="HTTP 503 (the service)", at=time.time() + 60, count=False)
    ledger._conn.execute("UPDATE files SET destination = 'old' WHERE id = ?", (row.id,))
    ledger.close()
    cfg.write_text(GOOD + '\n[destinations.old]\ntype = "lilt"\napi_key = "env:TEST_KEY"\n')
    code, out, err = run(capsys, "-c", str(cfg), "explain", str(inbox / "w.txt"))
    assert "it goes to 'old', the folder's destination when it was queued" in out, out
    assert "the last try failed (not counted): HTTP 503" in out and "attempt 0" not in out, out


# -- status: one source, ignored names, metrics, log_level ----------------------------------------


def test_status_counts_come_from_the_ledger_and_daemon_problems_are_listed(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    for name in ("a.txt", "b.txt"):
        row = add_row(ledger, inbox, name)
        ledger.mark_uploaded(row.id, sha256="cd" * 32, receipt={"remote_id": name})
        ledger.mark_done(row.id)
    # a stale heartbeat whose STATUS= line says other numbers than the ledger
    heartbeat(
        ledger,
        problems=["destination main down since 10:00:00: HTTP 503"],
        ignored={os.fspath(inbox): {"count": 2, "examples": [".foo.swp", "~$doc.docx"], "at": time.time()}},
        metrics={
            "listen": "127.0.0.1:8791",
            "error": "cannot serve metrics on 127.0.0.1:8791: Address already in use",
        },
    )
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0, err
    assert "15 done today" not in out and "4 uploading" not in out
    assert "files:  2 done (2 today)" in out
    assert "problem: destination main down since 10:00:00: HTTP 503" in out
    assert "metrics: NOT SERVED: cannot serve metrics on 127.0.0.1:8791: Address already in use" in out
    assert "ignored: 2 name(s)" in out and "'.foo.swp', '~$doc.docx'" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    assert data["done_today"] == 2 and data["folders"][0]["ignored"]["count"] == 2
    assert data["daemon"]["metrics"]["error"].endswith("Address already in use")


def test_status_says_why_a_running_daemons_heartbeat_is_old(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon paused on a full ledger disk writes no heartbeat: status says so, with the
    space left, instead of showing its last problems as if they were current."""
    ledger = ledger_of(cfg)
    heartbeat(ledger, problems=["destination main down since 10:00:00: HTTP 503"])
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "HEARTBEAT OLD" not in out  # fresh: nothing to say
    heartbeat(ledger, heartbeat=time.time() - 300)
    ledger.close()
    monkeypatch.setattr(statusmod, "space_left", lambda path: 4096)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert "heartbeat 5m ago" in out
    assert "HEARTBEAT OLD: the disk holding the ledger is full (4,096 bytes free)" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    assert data["daemon"]["heartbeat_stale"].startswith("the disk holding the ledger is full")
    monkeypatch.setattr(statusmod, "space_left", lambda path: 1 << 30)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert "HEARTBEAT OLD: the daemon has not written its heartbeat since: it may be stuck" in out


def test_status_says_the_ledgers_disk_is_full_before_the_heartbeat_is_old(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's disk filled up a few seconds ago: the daemon paused, and could not write
    the heartbeat that would say so. For the 30 s before the heartbeat counted as old,
    `syncd status` showed the daemon running with no problem (STATUS= said `disk full,
    paused (ledger)`). Status looks at the space itself."""
    ledger = ledger_of(cfg)
    heartbeat(ledger, heartbeat=time.time() - 8)  # one heartbeat (every 5 s) missed
    ledger.close()
    monkeypatch.setattr(statusmod, "space_left", lambda path: 0)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "HEARTBEAT OLD" not in out
    assert "problem: disk full, paused (ledger): 0 bytes free on the disk holding the ledger" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    assert data["daemon"]["ledger_disk_full"].startswith("disk full, paused (ledger)")
    monkeypatch.setattr(statusmod, "space_left", lambda path: 1 << 30)
    code, out, _ = run(capsys, "-c", str(cfg), "status")
    assert "disk full" not in out
    assert (
        json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])["daemon"]["ledger_disk_full"] is None
    )


def test_scanner_counts_ignored_names(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    (root / ".git").mkdir(parents=True)
    for name in (".foo.swp", "~$doc.docx", "a.txt", ".git/config", "b.part"):
        (root / name).write_bytes(b"x")
    folder = configmod.loads(
        f'[destinations.d]\ntype = "lilt"\napi_key = "k"\n[[folders]]\npath = "{root}"\ndestination = "d"\n',
        base_dir=tmp_path,
    ).folders[0]
    ignored = scanner.Ignored()
    found = [rel for rel, _ in scanner.walk(folder, ignored=ignored)]
    assert found == ["a.txt"]
    assert ignored.count == 4  # .foo.swp, ~$doc.docx, b.part and the .git directory
    assert set(ignored.examples) == {".foo.swp", "~$doc.docx", "b.part", ".git/"}


def test_a_metrics_port_in_use_is_kept_for_status() -> None:
    from syncd.metrics import Metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = Metrics()
        m.serve(f"127.0.0.1:{port}")
        assert m.error is not None and m.error.startswith(f"cannot serve metrics on 127.0.0.1:{port}")
        m.stop()
        assert m.error is None


def test_a_metrics_host_the_resolver_refuses_is_an_error_for_status_not_a_crash() -> None:
    """ "a..b" raised UnicodeError (not an OSError) from bind: a reload was left half-done
    and reported refused, and a start crashed and was restarted over and over."""
    from syncd.metrics import Metrics

    m = Metrics()
    m.serve("metrics..local:8791")
    assert m.error is not None and m.error.startswith("cannot serve metrics on metrics..local:8791")
    m.stop()


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    dest = '[destinations.d]\ntype = "lilt"\napi_key = "k"\n[[folders]]\npath = "in"\ndestination = "d"\n'
    cfg = configmod.loads('[daemon]\nlog_level = "INFO"\n' + dest, base_dir=tmp_path)
    assert cfg.daemon.log_level == "info"
    with pytest.raises(ConfigError) as info:
        configmod.loads('[daemon]\nlog_level = "LOUD"\n' + dest, base_dir=tmp_path)
    assert "got 'LOUD'" in str(info.value)


def test_docs_do_not_suggest_node_exporters_port() -> None:
    for rel in ("docs/configuration.md", "docs/operations.md", "config.example.toml", "docs/cli.md"):
        assert ":9100" not in (ROOT / rel).read_text(), rel  # no "HOST:9100" example
    assert ":9100" not in configmod.DaemonConfig.__dataclass_fields__["metrics_listen"].metadata["doc"]


# -- progress in status and files, --watch -------------------------------------------------------


def test_status_and_files_show_the_progress_of_uploads(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    inbox = cfg.parent / "inbox"
    ledger = ledger_of(cfg)
    row = add_row(ledger, inbox, "big.bin", size=30 * 1024 * 1024)
    heartbeat(ledger)
    meter = progress.ProgressMeter()
    now = time.time()
    sample = {
        "id": row.id,
        "path": row.inbox_path,
        "destination": "main",
        "total": row.size,
        "sent": 0,
        "resumed": 0,
        "started_at": now - 4,
    }
    meter.update([sample], now - 4)
    files = meter.update([{**sample, "sent": 12 * 1024 * 1024}], now)
    ledger.put_meta(progress.KV_KEY, progress.snapshot(files, os.getpid(), now), durable=False)
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0, err
    assert "uploading:" in out
    assert f"#{row.id} '{inbox / 'big.bin'}' -> main: 12.0 MiB of 30.0 MiB (40%), 3.0 MiB/s, ETA 6s" in out
    (u,) = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])["uploading"]
    assert u["progress"]["sent"] == 12 * 1024 * 1024 and u["progress"]["total"] == row.size
    assert u["progress"]["eta_seconds"] == pytest.approx(6.0)
    code, out, err = run(capsys, "-c", str(cfg), "files", "--state", "uploading")
    assert "[12.0 MiB of 30.0 MiB (40%), 3.0 MiB/s, ETA 6s]" in out
    (j,) = json.loads(run(capsys, "-c", str(cfg), "files", "--json")[1])
    assert j["progress"]["percent"] == 40.0


def test_stale_or_foreign_progress_is_not_shown() -> None:
    snap = progress.snapshot([{"id": 1, "sent": 1, "total": 2}], pid=42, now=1000.0)
    assert progress.read(snap, 42, now=1001.0)[1]["sent"] == 1
    assert progress.read(snap, 43, now=1001.0) == {}  # another daemon's
    assert progress.read(snap, None, now=1001.0) == {}  # none runs
    assert progress.read(snap, 42, now=1000.0 + progress.STALE_AFTER + 1) == {}


def test_status_watch_refreshes_until_ctrl_c(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(statusmod, "_nap", sleep)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "-c", str(cfg), "status", "--watch", "0.5")
    assert code == 0 and naps == [0.5, 0.5, 0.5]
    assert out.count("\033[H\033[2J") == 3 and out.count("syncd status every 0.5s") == 3
    assert out.count("folders:") == 3
    naps.clear()
    code, out, err = run(capsys, "-c", str(cfg), "status", "--watch", "--json")
    assert code == 0 and naps == [2.0, 2.0, 2.0]
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 3 and all("states" in d for d in docs)
    assert main(["-c", str(cfg), "status", "--watch", "0"]) == 2


@pytest.mark.process
def test_status_watch_as_a_command_ends_on_sigint_with_exit_0(cfg: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "status", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            time.sleep(2.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()  # only if it did not end (a no-op once it has been waited for)
    assert proc.returncode == 0, err
    assert out.count("syncd status every 0.2s") >= 2 and "Traceback" not in err


# -- what a careless operator hits: odd state_dir names, permissions, pipes ---------------------


@pytest.mark.parametrize("state_dir", ["st%20x", "state#2", "st?q"])
def test_a_state_dir_with_uri_characters_is_read_as_it_is(
    cfg: Path, capsys: pytest.CaptureFixture[str], state_dir: str
) -> None:
    """The read-only commands open the ledger through an SQLite URI: unescaped, "%20" named
    another file ("unusable", and the advised rebuild threw the ledger away) and "#"/"?"
    cut the path (a stray empty database, "no such table")."""
    cfg.write_text(GOOD.replace('state_dir = "state"', f'state_dir = "{state_dir}"'))
    ledger = Ledger.open(cfg.parent / state_dir / "ledger.sqlite3")
    add_row(ledger, cfg.parent / "inbox", "a.pdf")
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "files", "--json")
    assert code == 0, err
    assert [r["relpath"] for r in json.loads(out)] == ["a.pdf"]
    assert run(capsys, "-c", str(cfg), "status")[0] == 0
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "check")
    assert code == 0 and out.endswith(": ok\n")
    dest = cfg.parent / "backup.sqlite3"
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "backup", str(dest))
    assert code == 0 and "1 rows" in out, err
    assert sorted(p.name for p in cfg.parent.iterdir() if p.name.startswith("backup")) == ["backup.sqlite3"]
    assert not (cfg.parent / state_dir.split("%")[0].split("#")[0].split("?")[0]).is_file()


def test_a_file_that_is_not_a_ledger_is_said_so(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cfg.parent / "state").mkdir()
    (cfg.parent / "state" / "ledger.sqlite3").write_bytes(b"")
    for command in (["status"], ["files"], ["explain", str(cfg.parent / "inbox" / "a.pdf")]):
        code, _, err = run(capsys, "-c", str(cfg), *command)
        assert code == 4 and "holds no ledger yet" in err, (command, err)
    other = sqlite3.connect(cfg.parent / "state" / "ledger.sqlite3")
    other.execute("CREATE TABLE notes (text)")
    other.close()
    code, _, err = run(capsys, "-c", str(cfg), "status")
    assert code == 4 and "is not a syncd ledger" in err


def test_os_errors_are_one_line_not_a_traceback(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger_of(cfg).close()
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "backup", str(cfg.parent / "no" / "dir" / "x.db"))
    assert code == 2 and err.startswith("syncd: ") and "No such file or directory" in err
    assert "Traceback" not in err
    code, _, err = run(
        capsys, "-c", str(cfg.parent / "missing.toml"), "folder", "add", "new", "--destination", "main"
    )
    assert code == 2 and "missing.toml" in err
    closed = cfg.parent / "inbox" / "closed"
    closed.mkdir()
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kw: Any) -> os.stat_result:  # as a user who may not enter
        if os.fspath(path).startswith(os.fspath(closed) + "/"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    code, out, err = run(capsys, "-c", str(cfg), "explain", str(closed / "a.pdf"))
    assert code == 2 and "Permission denied" in err and "no such file" not in out + err
    monkeypatch.setattr(os, "lstat", real_lstat)
    denied = PermissionError(13, "Permission denied", str(cfg.parent / "state" / "lock"))
    monkeypatch.setattr(statusmod, "cmd_status", lambda args: (_ for _ in ()).throw(denied))
    monkeypatch.setitem(__import__("syncd.cli").cli._COMMANDS, "status", statusmod.cmd_status)
    code, _, err = run(capsys, "-c", str(cfg), "status")
    assert code == 2 and "Permission denied" in err and "sudo -u syncd" in err


def test_files_limit_must_be_positive(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for limit in ("0", "-1"):
        code, _, err = run(capsys, "-c", str(cfg), "files", "--limit", limit)
        assert code == 2 and "must be between 1 and" in err


def test_config_errors_are_masked(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg.write_text(GOOD.replace('"http://127.0.0.1:9/lilt"', '"https://user:PASSWORDX@api.lilt.com:abc/"'))
    code, _, err = run(capsys, "-c", str(cfg), "check")
    assert code == 2 and "PASSWORDX" not in err and "base_url" in err


@pytest.mark.process
def test_a_reader_that_stops_early_gets_no_traceback(cfg: Path) -> None:
    ledger = ledger_of(cfg)
    for i in range(3000):
        ledger.observe(os.fspath(cfg.parent / "inbox"), [f"f{i:05d}.pdf"], destination="main")
    ledger.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "files"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 128 + signal.SIGPIPE and "Traceback" not in err, err


def test_an_os_error_in_the_daemon_is_a_traceback_and_exit_1_which_systemd_restarts(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the commands turn an OSError into one line and exit 2; for `run` exit 2 is in
    RestartPreventExitStatus=, and a failing disk or a permission lost mid-run is
    systemd's to retry, with the traceback in the journal."""
    from syncd import cli

    for error in (PermissionError(13, "Permission denied", "/x"), OSError(5, "Input/output error")):

        def fail(args: Any, error: OSError = error) -> int:
            raise error

        monkeypatch.setitem(cli._COMMANDS, "run", fail)
        with pytest.raises(OSError):
            main(["-c", str(cfg), "run"])


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd import cli

    def fail(args: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")  # a socket, a helper's pipe: stdout is fine

    monkeypatch.setitem(cli._COMMANDS, "status", fail)
    with pytest.raises(BrokenPipeError):
        main(["-c", str(cfg), "status"])


def test_folder_add_says_what_check_would_warn_about(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The warnings of the edited config went nowhere (a logger without a handler): an
    archive_dir others may write, comments a rewrite dropped. `syncd check` then failed."""
    shared = cfg.parent / "shared-archive"
    shared.mkdir()
    shared.chmod(0o1777)
    code, out, err = run(
        capsys,
        "-c",
        str(cfg),
        "folder",
        "add",
        str(cfg.parent / "in2"),
        "-d",
        "main",
        "--archive-dir",
        str(shared),
    )
    assert code == 0 and "added folder" in out
    assert "syncd: warning: " in err and "writable by group/others" in err


def test_explain_answers_from_the_ledger_for_a_folder_no_longer_configured(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload removed a folder with files in flight: explain said "not inside any watched
    folder; syncd does not upload it" of a file being uploaded, and "no such file" of
    one archived, although the ledger knows both."""
    gone = cfg.parent / "gone"
    gone.mkdir()
    (gone / "waiting.bin").write_bytes(b"w")
    ledger = ledger_of(cfg)
    waiting = add_row(ledger, gone, "waiting.bin")
    ledger.mark_retry(waiting.id, error="folder unavailable: it is no longer configured", at=time.time() + 60)
    archived = add_row(ledger, gone, "done.bin")
    ledger.mark_uploaded(archived.id, sha256="ab" * 32, receipt={"remote_id": "r"})
    ledger.mark_done(archived.id, location=str(cfg.parent / "old-archive" / "done.bin"))
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(gone / "waiting.bin"))
    assert code == 0 and "a folder the configuration no longer has" in out, out
    assert f"ledger row #{waiting.id}" in out and "retrying" in out and "add it back" in out
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(cfg.parent / "old-archive" / "done.bin"))
    assert code == 0 and f"ledger row #{archived.id}" in out and "done" in out, out
    ledger = ledger_of(cfg)  # a configured folder's file in its old archive is not a removed folder's
    kept = add_row(ledger, cfg.parent / "inbox", "kept.bin")
    ledger.mark_uploaded(kept.id, sha256="cd" * 32, receipt={"remote_id": "k"})
    ledger.mark_done(kept.id, location=str(cfg.parent / "older-archive" / "kept.bin"))
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(cfg.parent / "older-archive" / "kept.bin"))
    assert "no longer has" not in out


def test_retry_of_a_file_whose_folder_is_gone_says_it_waits(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = cfg.parent / "gone"
    ledger = ledger_of(cfg)
    row = failed_row(ledger, gone, "a.txt")
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "retry", str(row.id))
    assert code == 0 and f"its folder '{gone}' is no longer configured" in out, out


def test_retry_of_a_failed_file_deleted_by_hand_says_so(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = ledger_of(cfg)
    row = failed_row(ledger, cfg.parent / "inbox", "gone.txt")  # failed where it was; no file there
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "retry", str(row.id))
    assert code == 0 and "no file is at that path now" in out, out


def test_status_lists_a_folder_the_configuration_lost_while_its_files_wait(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    """A reload removed a folder whose files were still on their way: they wait in the
    ledger (the journal says so once). `syncd status` counted them in its totals but
    listed no folder they belong to."""
    old = cfg.parent / "old-inbox"
    ledger = ledger_of(cfg)
    add_row(ledger, old, "waiting.txt")
    done = add_row(ledger, cfg.parent / "gone-long-ago", "x.txt")
    ledger.mark_uploaded(done.id, sha256="cd" * 32, receipt={"remote_id": "x"})
    ledger.mark_done(done.id)
    heartbeat(ledger)
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0, err
    assert f"{quoted(old)} -> ?: 1 uploading" in out, out
    assert "problem: not in the configuration" in out
    assert "gone-long-ago" not in out  # nothing of it on its way: not listed
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    [lost] = [f for f in data["folders"] if f["path"] == os.fspath(old)]
    assert lost["states"]["uploading"] == 1 and lost["destination"] is None


def quoted(path: Path) -> str:
    return f"'{path}'"


def test_status_shows_the_folders_the_running_daemon_applied_not_an_unapplied_edit(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    """The config file edited and not reloaded yet (or a folder path that leads elsewhere
    through a symlink now): `syncd status` showed the file's folders, with "no files
    yet", and not the folder the daemon works on, whose files were counted under none."""
    _record_config(cfg)
    ledger = ledger_of(cfg)
    add_row(ledger, cfg.parent / "inbox", "a.txt")
    heartbeat(ledger)
    ledger.close()
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0 and "config:" not in out, out
    (cfg.parent / "inbox2").mkdir()
    cfg.write_text(GOOD.replace('path = "inbox"', 'path = "inbox2"'))
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 0, err
    assert f"{quoted(cfg.parent / 'inbox')} -> main: 1 uploading" in out, out
    assert "inbox2" not in out.replace(f"{cfg}", "")
    assert "differs from the configuration the running daemon applied" in out
    assert "syncd reload" in out
    data = json.loads(run(capsys, "-c", str(cfg), "status", "--json")[1])
    assert [f["path"] for f in data["folders"]] == [os.fspath(cfg.parent / "inbox")]
    assert data["config"]["unapplied"] and data["config"]["ok"] is True


def test_ledger_backup_into_a_watched_folder_is_refused(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup written into an inbox was uploaded to the folder's destination (every
    path and remote id the ledger holds) and archived like any file dropped there."""
    ledger_of(cfg).close()
    inside = cfg.parent / "inbox" / "sub" / "b.db"
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "backup", str(inside))
    assert code == 2 and "lies inside the watched folder" in err and "'main'" in err, err
    assert not any((cfg.parent / "inbox").rglob("*"))
    code, out, err = run(capsys, "-c", str(cfg), "ledger", "backup", str(cfg.parent / "b.db"))
    assert code == 0 and (cfg.parent / "b.db").is_file(), err


def test_explain_says_what_the_running_daemon_reports_of_the_folder(
    cfg: Path, capsys: pytest.CaptureFixture[str], daemon_lock: StateLock
) -> None:
    """A folder the daemon does not scan or read (another syncd holds it, its marker is
    missing, a symlink put in its place): `explain` answered from the rules alone, as if
    the file were on its way."""
    inbox = cfg.parent / "inbox"
    (inbox / "x.txt").write_bytes(b"x")
    ledger = ledger_of(cfg)
    heartbeat(ledger, folder_problems={os.fspath(inbox): "already watched by another syncd (pid 42)"})
    ledger.close()
    for path in (inbox / "x.txt", inbox):
        code, out, err = run(capsys, "-c", str(cfg), "explain", str(path))
        assert code == 0, err
        assert "the running syncd reports this folder: already watched by another syncd (pid 42)" in out, out
    daemon_lock.release()  # no daemon runs: its last heartbeat says nothing of now
    code, out, err = run(capsys, "-c", str(cfg), "explain", str(inbox / "x.txt"))
    assert code == 0 and "reports this folder" not in out
