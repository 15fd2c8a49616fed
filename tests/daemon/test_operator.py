"""What an operator does to a running daemon and to its folders."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from syncd.ledger import ACTIVE_STATES
from tests.harness import Setup, wait_until

pytestmark = pytest.mark.process


def second_config(s: Setup, name: str = "other") -> Path:
    """The harness's config with a state_dir, archive and failed folders of its own: the
    same inboxes, as a second service (or a copy of the config) set up by mistake."""
    doc = tomllib.loads(s.config.read_text())
    doc["daemon"]["state_dir"] = f"{name}/state"
    for folder in doc["folders"]:
        folder["archive_dir"] = f"{name}/{folder['archive_dir']}"
        folder["failed_dir"] = f"{name}/{folder['failed_dir']}"
    path = s.tmp / f"{name}.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


def settled(s: Setup) -> bool:
    """The inbox is empty and no row of the harness's ledger is on its way."""
    return not any(s.inbox().iterdir()) and not any(r.state in ACTIVE_STATES for r in s.rows())


def start_other(s: Setup, config: Path, *args: str) -> subprocess.Popen[bytes]:
    log = s.tmp / f"{config.stem}.log"
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "-c", str(config), *(args or ("run",))],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=s.env(),
            cwd=s.tmp,
        )


def test_a_second_daemon_on_the_same_folder_uploads_nothing_twice(make_setup: Callable[..., Setup]) -> None:
    """Two daemons with their own state_dir watching one inbox: each file is uploaded
    once, by the first; the second says that the folder is another syncd's."""
    s = make_setup()
    s.start()
    s.wait_started()
    other = second_config(s)
    proc = start_other(s, other)
    log = s.tmp / "other.log"
    try:
        wait_until(lambda: "syncd started" in log.read_text(errors="replace"), 20, what="second start")
        for i in range(60):
            s.drop(f"f{i:03d}.bin", bytes([i]) * 5000)
        wait_until(lambda: settled(s), 60, what="the inbox emptied")
        assert len(s.emulator.uploads()) == 60, "a file was uploaded twice"
        assert not (s.tmp / "other" / "archive").exists() or not any((s.tmp / "other" / "archive").rglob("*"))
        text = log.read_text(errors="replace")
        assert "another syncd" in text, text[-2000:]
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(other), "status"],
            capture_output=True,
            text=True,
            env=s.env(),
            cwd=s.tmp,
            timeout=60,
        )
        assert "another syncd" in out.stdout, out.stdout
        # `syncd once` from cron beside the service: the same
        s.drop("cron.bin", b"cron")
        once = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(second_config(s, "cron")), "once"],
            capture_output=True,
            text=True,
            env=s.env(),
            cwd=s.tmp,
            timeout=60,
        )
        assert "another syncd" in once.stderr, once.stderr
        # not a quiet "no files" for cron: the folder it could not read is said, exit 1
        assert once.returncode == 1 and "1 folder(s) not read" in once.stdout, once.stdout
        wait_until(lambda: settled(s), 30, what="the cron file done")
        assert len(s.emulator.uploads()) == 61, "a file was uploaded twice"
        s.invariants()
        # the first stops: the second takes the folder over within a few seconds
        assert s.stop() == 0
        s.drop("late.bin", b"late")
        late = s.tmp / "other" / "archive" / "inbox" / "late.bin"
        wait_until(late.exists, 30, what="the folder taken over")
        assert len(s.emulator.uploads()) == 62
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    s.assert_no_secret()


def test_an_inbox_put_back_as_a_symlink_to_an_archive_is_not_followed(
    make_setup: Callable[..., Setup],
) -> None:
    """An inbox deleted, then put back as a symlink (here to the other folder's archive,
    which the configuration check refuses): the daemon, which resolved the path when it
    loaded the config, does not follow the link; it would upload that archive's files
    again and take them out of it."""
    s = make_setup(folders=[{"name": "a"}, {"name": "b"}])
    s.start()
    s.drop("one.txt", b"one", "a")
    wait_until(lambda: s.all_done(), 20, what="one.txt archived")
    s.inbox("b").rmdir()
    wait_until(lambda: "folder missing" in s.log_text(), 20, what="b reported missing")
    s.inbox("b").symlink_to(s.archive("a"))
    wait_until(lambda: "symlink" in s.log_text(), 20, what="the symlink reported")
    time.sleep(3)  # a health check or two
    assert (s.archive("a") / "one.txt").read_bytes() == b"one"
    assert len(s.emulator.uploads()) == 1
    [b] = [f for f in s.status()["folders"] if f["path"] == str(s.inbox("b"))]
    assert "symlink" in (b["problem"] or ""), b
    s.invariants()
    assert s.stop() == 0


def test_an_archive_folder_replaced_by_a_symlink_to_an_inbox_is_not_followed(
    make_setup: Callable[..., Setup],
) -> None:
    """An archive folder swapped for a symlink while syncd runs (here into the other
    folder's inbox, which the configuration check refuses): archiving through it put the
    file into that inbox, which uploaded it again and moved it away from the row that
    names it. The file waits in its inbox, uploaded, and is archived once the folder is
    a directory again."""
    s = make_setup(folders=[{"name": "a"}, {"name": "b"}])
    s.start()
    s.drop("first.txt", b"first", "b")
    wait_until(lambda: s.all_done(), 20, what="first.txt archived")
    os.rename(s.archive("b"), s.tmp / "archive-b-old")
    s.archive("b").symlink_to(s.inbox("a"))
    s.drop("loop.txt", b"loop", "b")
    wait_until(lambda: "through a symlink" in s.log_text(), 20, what="the symlink reported")
    time.sleep(2)
    assert len(s.emulator.uploads()) == 2, "uploaded again through the other inbox"
    assert not (s.inbox("a") / "loop.txt").exists()
    assert (s.inbox("b") / "loop.txt").read_bytes() == b"loop"
    s.archive("b").unlink()
    os.rename(s.tmp / "archive-b-old", s.archive("b"))
    wait_until(lambda: s.all_done(), 30, what="archived once the folder is back")
    assert (s.archive("b") / "loop.txt").read_bytes() == b"loop"
    assert len(s.emulator.uploads()) == 2
    s.invariants()
    assert s.stop() == 0


def test_a_state_dir_that_cannot_be_made_is_a_config_error_not_a_traceback(
    make_setup: Callable[..., Setup],
) -> None:
    """A state_dir whose path runs through a file (a typo, a mount point not there yet
    under /proc or a file system that refuses it): `syncd run` printed a traceback and
    exited 1, which systemd restarts again and again; `syncd check` said nothing."""
    s = make_setup()
    (s.tmp / "not-a-dir").write_text("x")
    doc = tomllib.loads(s.config.read_text())
    doc["daemon"]["state_dir"] = "not-a-dir/state"
    s.config.write_text(tomli_w.dumps(doc))
    out = s.cli("run")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "daemon.state_dir" in out.stderr and "not-a-dir" in out.stderr, out.stderr
    check = s.cli("check")
    assert check.returncode == 2 and "daemon.state_dir" in check.stderr + check.stdout, check
