"""``upload_processes``: helper processes send small files for the workers (syncd/offload.py).

The real daemon against the emulator, for every destination type: an idle
daemon has no helpers and the first small file starts them; the small
files are sent by helpers (their debug line says so) and arrive as they do
without helpers, with and without injected faults. A helper killed in the
middle of a send costs that attempt only: the worker sends the file itself
and a new helper takes its place. A SIGKILLed daemon takes its helpers
with it, also while they are sending, and the restarted daemon sends
those files again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.destinations import REGISTRY
from tests.e2e_services import CLEAN_OR_FAULTY, FAULTS, SERVICES, Service, assert_delivered
from tests.harness import Setup, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.process]


def helpers_of(pid: int) -> list[int]:
    """The upload helper processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"syncd.offload_helper" in cmdline:
            found.append(int(entry.name))
    return found


def with_helpers(make_setup: Callable[..., Setup], service: Service, *, faults: bool = False) -> Setup:
    """The service's usual setup (:func:`tests.e2e_services.make`), with two helpers."""
    kwargs = service.setup_kwargs({**FAULTS, "seed": 11} if faults else None)
    kwargs["daemon"].update(upload_processes=2, log_level="debug")
    return make_setup(**kwargs)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@CLEAN_OR_FAULTY
def test_small_files_are_sent_by_helpers(make_setup: Callable[..., Setup], kind: str, faults: bool) -> None:
    service = SERVICES[kind]
    s = with_helpers(make_setup, service, faults=faults)
    files = {f"f{i}.bin": os.urandom(1 + 997 * i) for i in range(12)}
    files["sub/deeper/name with spaces.txt"] = b"labels and category go along"
    s.start()
    warm_up(s)
    for name, data in files.items():
        s.drop(name, data)
    wait_until(lambda: s.all_done(len(files) + 1), 60, 0.1, "every file done")
    assert_delivered(s, service)
    log = s.logs[-1].read_text(errors="replace")
    # helpers never hold a file up: a worker that finds none free within 20 ms sends it
    # itself, so on a busy machine fewer go through them; some must
    assert log.count("sent by upload helper") >= 2, log[-3000:]
    assert s.stop() == 0


def test_a_helper_killed_mid_send_costs_one_attempt(make_setup: Callable[..., Setup]) -> None:
    service = SERVICES["lilt"]
    s = helpers_running(make_setup, service, {"op": "lilt.put", "kind": "slow", "delay": 5.0})
    assert s.proc is not None
    before = set(helpers_of(s.proc.pid))
    initiated, put = len(log_of(s, "lilt.initiate")), len(log_of(s, "lilt.put"))
    s.drop("held.bin", b"x" * 5000)
    # the emulator logs a request when it has answered: the PUT follows the params at once
    wait_until(lambda: len(log_of(s, "lilt.initiate")) > initiated, 20, 0.02, "params")
    time.sleep(0.5)  # the PUT is held by the emulator now
    assert len(log_of(s, "lilt.put")) == put
    for pid in before:  # the one sending, and the idle one
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: s.all_done(2), 60, 0.1, "the file done after the helper died")
    assert_delivered(s, service)
    assert max(row.attempts for row in s.rows()) <= 2
    log = s.logs[-1].read_text(errors="replace")
    assert "upload helper" in log and "exited" in log, log[-3000:]
    wait_until(
        lambda: len(set(helpers_of(s.proc.pid)) - before) == 2, 30, 0.1, "two new helpers in their place"
    )

    def shown() -> bool:
        helpers = s.status()["daemon"].get("upload_helpers") or {}
        return bool(helpers.get("running") == 2 and helpers.get("failed", 0) >= 1)

    wait_until(shown, 20, 0.5, "syncd status to show the helpers again, and the failure")
    text = s.cli("status", check=True).stdout
    assert "upload helpers: 2 of 2 running (0 sending)" in text and "failed while sending" in text, text
    assert s.stop() == 0


def test_helpers_end_with_the_daemon_and_nothing_is_lost(make_setup: Callable[..., Setup]) -> None:
    service = SERVICES["lilt"]
    s = helpers_running(make_setup, service, {"op": "lilt.put", "kind": "slow", "delay": 3.0, "count": 2})
    assert s.proc is not None
    pids = helpers_of(s.proc.pid)
    initiated = len(log_of(s, "lilt.initiate"))
    for i in range(6):
        s.drop(f"f{i}.bin", os.urandom(3000 + i))
    wait_until(lambda: len(log_of(s, "lilt.initiate")) >= initiated + 2, 20, 0.02, "two sends under way")
    time.sleep(0.3)  # both helpers are inside their held PUT now
    s.kill()  # SIGKILL: syncd cannot stop them
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "upload helpers outlived the daemon"
    s.start()
    wait_until(lambda: s.all_done(7), 60, 0.1, "every file done after the restart")
    assert_delivered(s, service)
    assert s.stop() == 0


def helpers_running(make_setup: Callable[..., Setup], service: Service, fault: dict[str, object]) -> Setup:
    """The daemon started, its two helpers running (:func:`warm_up`), then ``fault`` scripted."""
    s = with_helpers(make_setup, service)
    s.start()
    warm_up(s)
    s.emulator.set_faults(script=[fault])
    return s


def warm_up(s: Setup) -> None:
    """An idle daemon has no helpers; the first small file starts them."""
    s.wait_started()
    assert s.proc is not None and helpers_of(s.proc.pid) == []
    s.drop("warm-up.bin", b"the first file starts the helpers")
    wait_until(lambda: len(helpers_of(s.proc.pid)) == 2, 30, 0.05, "two upload helpers")  # type: ignore[union-attr]
    wait_until(lambda: s.all_done(1), 30, 0.05, "the first file")


def log_of(s: Setup, op: str) -> list[dict[str, object]]:
    return [e for e in s.emulator.requests() if e["op"] == op]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to be reaped counts as gone)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


@pytest.mark.parametrize("change", ["appended", "rewritten, mtime restored"])
def test_a_file_changed_while_a_helper_sends_it_is_sent_again(
    make_setup: Callable[..., Setup], change: str
) -> None:
    """The producer changes the file while a helper's PUT of it is on the wire: what
    the service got is not what is archived, so the new bytes are uploaded and those
    are the bytes archived (docs/guarantees.md F2), as without helpers."""
    service = SERVICES["lilt"]
    s = helpers_running(make_setup, service, {"op": "lilt.put", "kind": "slow", "delay": 2.0, "count": 1})
    path = s.drop("a.txt", b"AAAAAAAAAA")
    st = path.stat()
    wait_until(lambda: not s.emulator.faults.snapshot()["script"], 20, 0.02, "the held PUT")
    time.sleep(0.2)  # the 10-byte body follows the headers at once
    if change == "appended":
        with open(path, "ab") as f:
            f.write(b" and more")
    else:
        with open(path, "r+b") as f:
            f.write(b"BBBBBBBBBB")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from mtime
    new = path.read_bytes()
    s.dropped[("in", "a.txt")] = new
    wait_until(lambda: s.all_done(2), 30, 0.1, "the new version")
    assert (s.archive() / "a.txt").read_bytes() == new
    log = s.logs[-1].read_text(errors="replace")
    sent = [line for line in log.splitlines() if "sent by upload helper" in line and "a.txt" in line]
    assert sent, log[-3000:]  # the changed version went through a helper, not a worker
    s.wait_logged("changed during upload" if change == "appended" else "rewritten during upload")
    s.invariants()
    assert s.stop() == 0


def test_stopped_helpers_hold_up_one_file_each_and_are_replaced(make_setup: Callable[..., Setup]) -> None:
    """Both helpers stopped (SIGSTOP: a frozen process, a hang in the kernel). The files
    dropped meanwhile go at once, sent by the workers themselves; a file a stopped helper
    held is sent again once it has said nothing for 30 s, and the helper is replaced.
    Before, every small file waited for the stopped helpers until syncd was stopped."""
    service = SERVICES["lilt"]
    # the params call held: the helper is stopped before it sends any bytes (bytes the
    # service stored unbeknownst to syncd would be a second object when the file is resent)
    s = helpers_running(make_setup, service, {"op": "lilt.initiate", "kind": "slow", "delay": 3.0})
    assert s.proc is not None
    stopped = set(helpers_of(s.proc.pid))
    s.drop("held.bin", b"x" * 5000)
    wait_until(lambda: not s.emulator.faults.snapshot()["script"], 20, 0.02, "the params call held")
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(6):
            s.drop(f"after{i}.bin", os.urandom(100 + i))

        # the stopped idle helper takes one of them; the other five go before the 30 s of
        # silence after which the stopped helpers are given up
        def after_done() -> int:
            return sum(1 for r in s.rows() if r.relpath.startswith("after") and r.state == "done")

        wait_until(lambda: after_done() >= 5, 28, 0.1, "the files dropped after the stop")
        wait_until(lambda: s.all_done(8), 60, 0.2, "the held file, sent again")
        assert_delivered(s, service)
        # each stopped helper that was handed a file (the idle one is, unless the workers
        # sent all six first) is killed once silent for 30 s; an idle one at IDLE_STOP
        silent = s.logs[-1].read_text(errors="replace").count("said nothing for 30s")
        assert silent >= 1
        wait_until(lambda: sum(not alive(p) for p in stopped) >= silent, 20, 0.1, "the silent helpers killed")
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert s.stop() == 0


def test_a_resume_state_too_large_for_a_helper_is_sent_by_the_worker(
    make_setup: Callable[..., Setup],
) -> None:
    """A small file in 1,500 tiny parts (the server dictates 1 KiB): its resume
    state (every part's sealed URL) is more than a helper's message carries. The helper
    said so as a socket error ("Message too long") at each attempt, the same helper got
    the file again, and after max_attempts it went to failed_dir. Now the helper's first
    attempt says so and the worker sends the file itself at the next."""
    service = dataclasses.replace(SERVICES["wriftai"], part_size=1024)
    kwargs = service.setup_kwargs({"wriftai_part_size": 1024})
    kwargs["daemon"].update(upload_processes=2, log_level="debug")
    kwargs["folders"][0]["max_attempts"] = 3
    s = make_setup(**kwargs)
    s.start()
    warm_up(s)
    data = os.urandom(1500 * 1024)
    s.drop("tiny-parts.bin", data)
    wait_until(lambda: s.all_done(2), 90, 0.2, "the file of 1,500 parts")
    assert_delivered(s, service)
    assert max(row.attempts for row in s.rows()) == 2  # the helper's, then the worker's
    log = s.logs[-1].read_text(errors="replace")
    assert "too large for an upload helper" in log and "Message too long" not in log, log[-3000:]
    assert s.stop() == 0
