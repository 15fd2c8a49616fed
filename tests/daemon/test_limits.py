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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd import config as configmod
from syncd import descriptors
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


def _need(s: Setup, monkeypatch: pytest.MonkeyPatch, watch: bool = True) -> descriptors.Need:
    """What the configuration may hold at once, as syncd counts it (``watch``: not once)."""
    monkeypatch.setenv("TEST_LILT_KEY", s.env()["TEST_LILT_KEY"])
    return descriptors.needed(configmod.load(s.config), watch=watch)


def test_a_descriptor_limit_below_what_the_config_may_hold_is_said_at_start(
    make_setup: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LimitNOFILE=64` with `workers = 32`: the daemon started without a word, and files
    then waited on EMFILE (said only once one ran into it). Now the start says it, once: the
    descriptors the configuration may hold at once, the limit, and what to raise. It still
    starts and uploads every file. The figure is no underestimate: the same daemon under no
    low limit, busy with files in every folder, holds fewer."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit(1) is not installed")
    names = [f"in{i}" for i in range(3)]
    s = make_setup(folders=[{"name": n} for n in names], daemon={"workers": 32})
    need = _need(s, monkeypatch)
    s.start()
    s.wait_started()
    assert s.proc is not None
    for n in range(30):
        for name in names:
            s.drop(f"a{n:02}.bin", os.urandom(20_000), folder=name)
    peak = 0
    deadline = time.monotonic() + 120
    while not s.all_done() and time.monotonic() < deadline:
        peak = max(peak, _open_fds(s.proc.pid))
        time.sleep(0.005)
    assert s.all_done() and 0 < peak <= need.total, (peak, need)
    assert s.stop() == 0
    assert "descriptor limit" not in s.log_text()  # the hard limit here is far above it
    for n in range(10):
        for name in names:
            s.drop(f"b{n:02}.bin", os.urandom(20_000), folder=name)
    s.start(wrapper=[prlimit, "--nofile=64:64"])
    s.wait_started()
    wait_until(lambda: s.all_done(), 120, 0.5, "every file uploaded and archived")
    log = s.logs[-1].read_text()
    assert log.count("the descriptor limit (64) is below") == 1, log[-3000:]
    assert f"may hold at once: {need.total} ({32 * descriptors.PER_WORKER} for 32 workers, " in log, log[
        -3000:
    ]
    assert f"Raise it to at least {need.limit}: LimitNOFILE= in the unit" in log and "ulimit -n" in log
    assert log.index("descriptor limit") < log.index("syncd started")  # said at start
    assert not [r for r in s.rows() if r.state == "failed"]
    assert len(s.emulator.uploads()) == 120
    assert s.stop() == 0
    s.invariants()


def test_a_reload_to_more_than_the_descriptor_limit_holds_is_said(
    make_setup: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at the limit was made at start only: a reload from 2 workers to 32 under
    `LimitNOFILE=64` said nothing until files waited on EMFILE. The reload says it now."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit(1) is not installed")
    s = make_setup(daemon={"workers": 2})
    s.start(wrapper=[prlimit, "--nofile=64:64"])
    s.wait_started()
    assert "descriptor limit" not in s.log_text()
    s._write_config({"workers": 32}, {})
    assert s.cli("reload").returncode == 0
    s.wait_logged("configuration reloaded")
    s.wait_logged("the descriptor limit (64) is below")
    s.drop("after.bin", os.urandom(20_000))
    wait_until(lambda: s.all_done(1), 60, 0.5, "the file uploaded and archived")
    assert s.stop() == 0
    s.invariants()


def test_syncd_once_and_check_say_a_descriptor_limit_too_low(
    make_setup: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`syncd once` under the same limit says it in its log and still uploads; `syncd check`
    prints it, with the limit it would run with there (and says what is needed when the
    limit is enough)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit(1) is not installed")
    s = make_setup(daemon={"workers": 32})
    need = _need(s, monkeypatch)
    for n in range(10):
        s.drop(f"f{n}.bin", os.urandom(20_000))
    wrapper = [prlimit, "--nofile=64:64"]
    proc = s.start("once", wrapper=wrapper)
    assert proc.wait(120) == 0, s.log_text()[-3000:]
    log = s.log_text()
    assert log.count("the descriptor limit (64) is below") == 1, log[-3000:]
    assert f"Raise it to at least {_need(s, monkeypatch, watch=False).limit}" in log  # no inotify
    assert s.all_done(10)
    command = [sys.executable, "-m", "syncd", "-c", str(s.config), "check"]
    low = subprocess.run([*wrapper, *command], capture_output=True, text=True, env=s.env(), timeout=60)
    assert low.returncode == 0, low.stderr
    assert (
        f"descriptors: up to {need.total} at once ({32 * descriptors.PER_WORKER} for 32 workers, "
        in low.stdout
    ), low.stdout
    assert "warning: the descriptor limit (64) is below" in low.stdout and "LimitNOFILE=" in low.stdout
    enough = subprocess.run([prlimit, f"--nofile={need.limit}:{need.limit}", *command], capture_output=True,
                            text=True, env=s.env(), timeout=60)  # fmt: skip
    assert enough.returncode == 0 and f"the limit here: {need.limit}" in enough.stdout, enough.stdout
    assert "warning: the descriptor limit" not in enough.stdout


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
