"""The `syncd` command line, in-process (main(argv)), on real files and a real ledger."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.cli import main
from syncd.ledger import Ledger
from tests.conftest import note_stat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_KEY", "cli-test-key-123")
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "syncd.toml"
    path.write_text("""
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
category = "SOURCE"
include = ["*.pdf", "*.txt"]
exclude = ["drafts"]
settle_seconds = 5
archive_dir = "archive"
""")
    path.chmod(0o600)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "run",
        "once",
        "status",
        "files",
        "retry",
        "check",
        "explain",
        "init",
        "folder",
        "emulate",
        "examples:",
        "Exit codes",
    ):
        assert word in out


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["files", "--state", "nonsense"]) == 2


def test_config_error_is_exit_2_and_names_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nwrokers = 3\n[[folders]]\npath = "x"\ndestination = "nope"\n')
    code, out, err = run(capsys, "-c", str(bad), "check")
    assert code == 2
    assert "daemon.wrokers" in err and "did you mean 'workers'" in err
    assert "folders[0].destination" in err
    code, out, err = run(capsys, "-c", str(tmp_path / "missing.toml"), "status")
    assert code == 2 and "syncd init" in err


def test_check_reports_metadata_delivery(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(cfg), "check")
    assert code == 0, out + err
    assert "labels ['legal'] are delivered as metadata.labels" in out
    assert "cli-test-key-123" not in out + err


def test_check_warns_of_plain_http_to_another_host(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(cfg), "check")
    assert code == 0 and "plain HTTP" not in out  # loopback: the emulator
    cfg.write_text(cfg.read_text().replace("http://127.0.0.1:9/lilt", "http://lilt.example.net/lilt"))
    code, out, err = run(capsys, "-c", str(cfg), "check")
    assert code == 0, out + err
    assert "destination main: warning: base_url http://lilt.example.net/lilt is plain HTTP" in out


def test_check_online_reports_unreachable(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(cfg), "check", "--online")
    assert code == 2 and "error: destination main" in out
    assert "cli-test-key-123" not in out + err


def test_status_and_files_without_a_ledger(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", str(cfg), "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["states"]["done"] == 0 and data["daemon"]["running"] is False
    assert data["folders"][0]["destination"] == "main"
    (dest,) = data["destinations"]  # no daemon: nobody knows whether it is up
    assert (dest["name"], dest["type"], dest["state"], dest["up"]) == ("main", "lilt", "unknown", None)
    code, out, _ = run(capsys, "-c", str(cfg), "files")
    assert code == 0 and "no files" in out


def _ledger_with_rows(cfg: Path) -> Ledger:
    ledger = Ledger.open(cfg.parent / "state" / "ledger.sqlite3")
    return ledger


def test_explain_variants(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inbox = cfg.parent / "inbox"

    def explain(p: Path, code: int = 0) -> str:
        got, out, _ = run(capsys, "-c", str(cfg), "explain", str(p))
        assert got == code, out
        return out

    # a path that does not exist and that the ledger never saw: exit 2
    assert "no such file" in explain(cfg.parent / "elsewhere.pdf", 2)
    (cfg.parent / "elsewhere.pdf").write_bytes(b"x")
    assert "not inside any watched folder" in explain(cfg.parent / "elsewhere.pdf")
    assert "junk pattern '*.part'" in explain(inbox / "x.part", 2)
    (inbox / "x.part").write_bytes(b"x")
    assert "junk pattern '*.part'" in explain(inbox / "x.part")
    assert "exclude pattern 'drafts'" in explain(inbox / "drafts" / "a.pdf", 2)
    assert "no include pattern" in explain(inbox / "a.doc", 2)
    os.mkfifo(inbox / "pipe.txt")
    assert "FIFO" in explain(inbox / "pipe.txt")
    (inbox / "new.pdf").write_bytes(b"x")
    assert "not seen yet" in explain(inbox / "new.pdf")
    ledger = _ledger_with_rows(cfg)
    root = os.fspath(inbox)
    ledger.observe(root, ["new.pdf"], destination="main")
    row = ledger.active_for_path(root, "new.pdf")
    assert row is not None
    note_stat(ledger, row.id, size=1, mtime_ns=1, inode=1)
    text = explain(inbox / "new.pdf")
    assert "settling" in text and "left" in text and "open for writing" not in text
    with open(inbox / "new.pdf", "ab"):  # a writer that stalled with the file open
        assert "a process still has it open for writing" in explain(inbox / "new.pdf")
    ledger.promote(row.id)
    claimed = ledger.claim_next()
    assert claimed is not None
    ledger.mark_retry(row.id, error="HTTP 503", at=2e9)
    text = explain(inbox / "new.pdf")
    assert "HTTP 503" in text and "next attempt" in text
    ledger.claim_next()
    ledger.mark_failed(row.id, error="HTTP 400: nope", location=str(cfg.parent / "f.pdf"))
    text = explain(inbox / "new.pdf")
    assert "failed: HTTP 400: nope" in text and f"syncd retry {row.id}" in text
    ledger.close()
    assert "the archive folder of" in explain(cfg.parent / "archive" / "x.pdf", 2)
    (cfg.parent / "archive").mkdir()
    (cfg.parent / "archive" / "x.pdf").write_bytes(b"x")
    assert "the ledger has no row that put it there" in explain(cfg.parent / "archive" / "x.pdf")


def test_files_json_and_retry(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = _ledger_with_rows(cfg)
    root = os.fspath(cfg.parent / "inbox")
    ledger.observe(root, ["a.txt", "b.txt"], destination="main")
    a = ledger.active_for_path(root, "a.txt")
    assert a is not None
    note_stat(ledger, a.id, size=1, mtime_ns=1, inode=1)
    ledger.promote(a.id)
    ledger.claim_next()
    ledger.mark_failed(a.id, error="HTTP 400", location=None)
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "files", "--state", "failed", "--json")
    rows = json.loads(out)
    assert [r["relpath"] for r in rows] == ["a.txt"] and rows[0]["last_error"] == "HTTP 400"
    code, out, err = run(capsys, "-c", str(cfg), "retry", "999")
    assert code == 1 and "#999: no such ledger row" in err and "nothing requeued" in out
    code, out, _ = run(capsys, "-c", str(cfg), "retry", "--failed")
    assert code == 0 and f"requeued #{a.id}" in out and "not running" in out
    code, out, _ = run(capsys, "-c", str(cfg), "status", "--json")
    assert json.loads(out)["states"]["queued"] == 1


def test_init_and_folder_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.toml"
    code, out, _ = run(capsys, "init", str(path))
    assert code == 0 and path.exists() and (path.stat().st_mode & 0o777) == 0o600
    code, _, err = run(capsys, "init", str(path))
    assert code == 2 and "--force" in err
    (tmp_path / "scans").mkdir()
    code, out, err = run(
        capsys,
        "-c",
        str(path),
        "folder",
        "add",
        str(tmp_path / "scans"),
        "--destination",
        "demo",
        "--label",
        "scan",
        "--label",
        "a b",
        "--category",
        "REFERENCE",
    )
    assert code == 0, err
    code, out, err = run(capsys, "-c", str(path), "check")
    assert code in (0, 2), err
    assert "scans" in out and "'scan', 'a b'" in out
    code, out, err = run(
        capsys, "-c", str(path), "folder", "add", str(tmp_path / "x"), "--destination", "missing"
    )
    assert code == 2 and "missing" in err


def test_a_healthy_ledger_is_not_rebuilt_without_force(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rebuild keeps only the rows of finished files: run on a ledger that was fine (the
    advice once given for a read-only file system), it dropped the queued files' rows
    and resume points without a word."""
    state = cfg.parent / "state"
    Ledger.open(state / "ledger.sqlite3").close()
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "rebuild")
    assert code == 2 and "passes its integrity check: nothing to rebuild" in err and "--force" in err
    assert not [p for p in state.iterdir() if ".broken-" in p.name]
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "rebuild", "--force")
    assert code == 0 and "moved ledger.sqlite3.broken-" in out


def test_ledger_check_and_rebuild(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = cfg.parent / "state"
    Ledger.open(state / "ledger.sqlite3").close()
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "check")
    assert code == 0 and out.strip().endswith(": ok")
    (state / "ledger.sqlite3").write_bytes(b"garbage" * 1000)
    code, out, err = run(capsys, "-c", str(cfg), "status")
    assert code == 4 and "ledger rebuild" in err
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "rebuild")
    assert code == 0 and "moved ledger.sqlite3.broken-" in out
    code, out, _ = run(capsys, "-c", str(cfg), "status", "--json")
    assert code == 0
    assert any(p.name.startswith("ledger.sqlite3.broken-") for p in state.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the operator runs the rebuild as root")
def test_a_rebuild_run_as_root_gives_the_new_ledger_to_the_daemons_user(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon runs as its own user (syncd, owner of state_dir); the operator runs
    `syncd ledger rebuild` as root, as operations.md says. The new ledger was root's,
    0600: the next start failed with "not writable by this user" (exit 1, restarted by
    the unit in a loop) until someone thought of chown. Created by root, the ledger (and
    with it SQLite's -wal and -shm) and the lock belong to the owner of their directory."""
    state = cfg.parent / "state"
    uid = gid = 4321  # the daemon's user
    Ledger.open(state / "ledger.sqlite3").close()
    for p in (state, *state.iterdir()):
        os.chown(p, uid, gid)
    (state / "ledger.sqlite3").write_bytes(b"garbage" * 1000)
    code, out, _ = run(capsys, "-c", str(cfg), "ledger", "rebuild")
    assert code == 0 and "moved ledger.sqlite3.broken-" in out
    made = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in state.iterdir()}
    assert made and set(made.values()) == {(uid, gid)}, made


@pytest.mark.parametrize(
    "argv",
    [
        ["retry", "99999999999999999999999"],
        ["files", "--receipt", "99999999999999999999"],
        ["files", "--limit", "99999999999999999999"],
        ["retry", "0"],
    ],
)
def test_an_id_or_count_sqlite_cannot_hold_is_a_usage_error(
    cfg: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """It was an OverflowError traceback (exit 1), and aborted the other ids given."""
    code, _, err = run(capsys, "-c", str(cfg), *argv)
    assert code == 2 and "must be between 1 and 9223372036854775807" in err and "Traceback" not in err


def test_retry_takes_ids_as_files_shows_them(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger.open(cfg.parent / "state" / "ledger.sqlite3").close()
    code, _, err = run(capsys, "-c", str(cfg), "retry", "#3")
    assert code == 1 and "#3: no such ledger row" in err


def test_folder_add_refuses_a_path_toml_cannot_hold(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = cfg.read_bytes()
    code, _, err = run(
        capsys, "-c", str(cfg), "folder", "add", os.fsdecode(b"bad\xff"), "--destination", "main"
    )
    assert code == 2 and "is not valid UTF-8" in err and "Traceback" not in err
    assert cfg.read_bytes() == before


@pytest.mark.process
def test_ctrl_c_while_syncd_starts_is_exit_130_without_a_traceback(cfg: Path) -> None:
    """Ctrl-C while syncd's modules load (the first 0.2 s) printed a traceback. The
    interrupt is raised at that moment by an import hook: no race with the machine."""
    code = f"""
import runpy, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "syncd.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv = ["syncd", "-c", {str(cfg)!r}, "status"]
runpy.run_module("syncd", run_name="__main__")
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert out.returncode == 130 and b"Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("value", ["-1", "0", "inf", "nan", "1e9"])
def test_reload_timeout_is_a_bounded_number_of_seconds(
    cfg: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = run(capsys, "-c", str(cfg), "reload", "--timeout", value)
    assert code == 2 and "expected seconds above 0, up to 86400" in err


@pytest.mark.parametrize("value", ["0", "-1", "4194305", "1.5", "self"])
def test_reload_pid_is_a_process_id(cfg: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    """`--pid 0` or `-1` (a process group, every process, to kill(2)) was taken and said
    "holds no syncd lock", exit 1: a usage error, exit 2, as for other bad numbers."""
    code, _, err = run(capsys, "-c", str(cfg), "reload", f"--pid={value}")
    assert code == 2 and "process id" in err


@pytest.mark.parametrize("command", [["ledger", "check"], ["ledger", "backup", "BACKUP"]])
def test_no_ledger_at_all_is_not_called_unusable(
    cfg: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Before syncd first ran (or with a state_dir typo), `ledger check` exited 4, the code
    that says "unusable: see syncd ledger rebuild", for a ledger that is not there."""
    argv = [str(cfg.parent / "backup.sqlite3") if a == "BACKUP" else a for a in command]
    code, _, err = run(capsys, "-c", str(cfg), *argv)
    assert code == 1 and "no ledger at" in err and "rebuild" not in err


def test_a_ledger_only_out_of_reach_is_not_rebuilt(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger of an older syncd (read-only views cannot read it unmigrated) is fine: the
    rebuild went ahead and dropped its unfinished rows."""
    from tests.unit.test_ledger import _schema_2_ledger

    state = cfg.parent / "state"
    state.mkdir()
    _schema_2_ledger(state / "ledger.sqlite3")
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "rebuild")
    assert code == 1 and "older syncd (schema 2)" in err
    assert not [p for p in state.iterdir() if ".broken-" in p.name]


@pytest.mark.parametrize("dest", ["-", "newdir/", "EXISTING"])
def test_ledger_backup_wants_a_file_name(cfg: Path, capsys: pytest.CaptureFixture[str], dest: str) -> None:
    """A directory (or `-`) as the destination made a file named after it."""
    Ledger.open(cfg.parent / "state" / "ledger.sqlite3").close()
    (cfg.parent / "EXISTING").mkdir()
    target = f"{cfg.parent}/{dest}" if dest != "-" else "-"
    code, _, err = run(capsys, "-c", str(cfg), "ledger", "backup", target)
    assert code == 2 and "is not a file name" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the operator runs the command as root")
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_lock_file_the_daemons_user_points_elsewhere_gives_root_nothing(tmp_path: Path, how: str) -> None:
    """state_dir is the daemon's user's: it can put a symlink (or, where the kernel lets
    it, a hard link) to a file of root's in place of syncd.lock. A command run as root
    that takes the lock must not hand that file to the daemon's user."""
    from syncd.lock import LOCK_NAME, StateLock

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 4321, 4321)  # the daemon's user
    victim = tmp_path / "roots-file"
    victim.write_text("root's\n")
    victim.chmod(0o644)
    if how == "symlink":
        (state / LOCK_NAME).symlink_to(victim)
    else:
        os.link(victim, state / LOCK_NAME)
    lock = StateLock(state)
    with contextlib.suppress(Exception):
        lock.acquire()
    lock.release()
    st = victim.stat()
    assert (st.st_uid, st.st_gid) == (0, 0), "root's file was given to the daemon's user"
    if how == "symlink":  # not followed: not written to either
        assert victim.read_text() == "root's\n"
