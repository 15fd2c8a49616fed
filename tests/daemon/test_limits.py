"""A host at its limits: syncd out of file descriptors or threads (syncd/limits.py).

The real daemon under a low ``RLIMIT_NOFILE`` (``prlimit``, as ``LimitNOFILE=``
would set it) and, run as an unprivileged user, a low ``RLIMIT_NPROC`` (the
threads it may have, as ``TasksMax=`` counts them). Neither is the file's
failure: no file may end in ``failed_dir`` over it, none may be lost, and it
is said once, not once per file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Setup, wait_until

pytestmark = pytest.mark.process


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_fails_no_file_and_is_said_once(make_setup: Callable[..., Setup]) -> None:
    """16 workers, 8 folders and a descriptor limit a few above what the idle daemon holds:
    opening files, sockets and archive moves run into EMFILE over and over. Each of those
    spent an attempt of the file (`max_attempts = 2`: files ended `failed`, "gave up after 2
    attempts: cannot open the file: Too many open files", left in the inbox), the archive
    step called each folder stuck, and every try was a WARNING line; a file whose upload
    the service had confirmed was sent again when the check of where it is now ran out of
    descriptors, and idle pooled connections could keep the table full once uploads were
    over, so that archive moves never got one. Now every file is uploaded once and
    archived, and the log says once what ran out and what to raise."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit(1) is not installed")
    folders = [{"name": f"in{i}", "max_attempts": 2} for i in range(8)]
    s = make_setup(folders=folders, daemon={"workers": 16})
    s.start()
    s.wait_started()
    time.sleep(0.5)
    assert s.proc is not None
    limit = _open_fds(s.proc.pid) + 6  # what it holds idle, and a few
    assert s.stop() == 0
    s.start(wrapper=[prlimit, f"--nofile={limit}:{limit}"])
    s.wait_started()
    for n in range(40):
        for i in range(8):
            s.drop(f"f{n:02}.bin", os.urandom(20_000), folder=f"in{i}")
    wait_until(lambda: s.all_done(), 120, 0.5, "every file uploaded and archived")
    log = s.log_text()
    assert "out of file descriptors" in log, log[-3000:]
    assert log.count("syncd out of file descriptors") == 1, log[-3000:]
    assert "gave up after" not in log and "attempt 1 of 2" not in log, log[-3000:]
    assert "could not archive" not in log, log[-3000:]
    assert not [r for r in s.rows() if r.state == "failed"]
    uuids = [u["uuid"] for u in s.emulator.uploads()]
    assert len(uuids) == len(set(uuids)) == 320  # none sent twice (nothing was in flight at a crash)
    assert s.stop() == 0
    s.invariants()
    s.assert_no_secret()


@pytest.fixture
def nobody_tmp() -> Iterator[tuple[Path, pwd.struct_passwd]]:
    """A temporary folder that the user nobody owns (for a daemon run as nobody)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon runs as the user nobody under a process limit (root has none)")
    if shutil.which("setpriv") is None or shutil.which("prlimit") is None:
        pytest.skip("setpriv(1) or prlimit(1) is not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user nobody")
    tmp = Path(tempfile.mkdtemp(prefix="syncd-limits-"))
    tmp.chmod(0o755)
    try:
        yield tmp, nobody
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _own(tree: Path, user: pwd.struct_passwd) -> None:
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)


def test_at_the_thread_limit_the_daemon_starts_with_fewer_workers_and_uploads_everything(
    nobody_tmp: tuple[Path, pwd.struct_passwd],
) -> None:
    """Run as an unprivileged user whose process limit (`ulimit -u`, like the unit's
    TasksMax=) leaves room for the daemon's own threads but not for all its workers or
    for the parts of a large file in parallel: the start died with a traceback
    ("can't start new thread", exit 1, a restart loop under systemd), and a large file's
    parallel parts failed it for good ("internal error", every attempt spent). Now the
    daemon starts the workers it can, says so once, sends the parts with the threads it
    has, and every file is uploaded and archived."""
    tmp, nobody = nobody_tmp
    s = Setup(
        tmp,
        folders=[{"name": "in", "max_attempts": 2}],
        daemon={"workers": 8},
        lilt={"multipart_threshold": 5 << 20, "part_size": 5 << 20, "parallel_parts": 4},
    )
    try:
        for i in range(3):
            s.drop(f"big{i}.bin", os.urandom(12 << 20))
        for i in range(10):
            s.drop(f"small{i}.txt", os.urandom(500))
        _own(tmp, nobody)
        wrapper = [
            "prlimit",
            "--nproc=8:8",  # main, scanner, archiver, the inotify threads and a worker or two
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
        ]
        s.start(wrapper=wrapper)
        wait_until(lambda: s.all_done(), 120, 0.5, "every file uploaded and archived")
        log = s.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert "syncd cannot start a thread" in log and "upload workers started" in log, log[-3000:]
        assert log.count("syncd cannot start a thread") == 1, log[-3000:]
        assert not [r for r in s.rows() if r.state == "failed"]
        assert s.stop() == 0
        s.invariants()
    finally:
        s.close()


def test_too_few_threads_for_the_daemon_itself_is_said_in_one_line(
    nobody_tmp: tuple[Path, pwd.struct_passwd],
) -> None:
    """A process limit below the daemon's own few threads: the start ended in a traceback
    (`RuntimeError: can't start new thread`). It says what ran out in one line, exit 1."""
    tmp, nobody = nobody_tmp
    s = Setup(tmp, folders=[{"name": "in"}])
    try:
        _own(tmp, nobody)
        ids = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        s.start(wrapper=["prlimit", "--nproc=3:3", "setpriv", *ids])
        assert s.proc is not None and s.proc.wait(60) == 1
        log = s.log_text()
        last = log.rstrip().splitlines()[-1]
        assert last.startswith("syncd: cannot start a thread (the unit's TasksMax="), log
        assert "syncd/cli.py" not in log, log  # no traceback out of the command itself
    finally:
        s.close()
