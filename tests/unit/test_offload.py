"""Upload helpers (syncd/offload.py) on their own: errors across the socket, what is
handed over, and helpers that cannot start. The daemon with real helpers against the
emulator: tests/daemon/test_upload_processes.py."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncd import config as configmod
from syncd import limits, offload
from syncd.bandwidth import Bandwidth, Limit
from syncd.destinations._chunked import SessionLost
from syncd.destinations.base import Receipt, Source, UploadItem
from syncd.errors import FatalError, PermanentError, RetryableError, SourceMovedError
from syncd.offload_helper import CheckpointRefused, HelperFailed, decode, encode
from syncd.retry_policy import is_disk_full

CONFIG = """
[daemon]
state_dir = "state"
upload_processes = {n}

[destinations.d]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "offload-test-key"

[[folders]]
path = "inbox"
destination = "d"
"""


def load(tmp_path: Path, n: int) -> configmod.Config:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "syncd.toml"
    path.write_text(CONFIG.format(n=n))
    path.chmod(0o600)
    return configmod.load(path)


@pytest.mark.parametrize(
    "exc",
    [
        RetryableError("503 from the service", status=503, retry_after=7.5, transport=False),
        RetryableError("connection reset", transport=True),
        PermanentError("HTTP 400: bad", status=400),
        FatalError("HTTP 401"),
        SourceMovedError("renamed during upload"),
        SessionLost("the service forgot the session"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_upload_errors_cross_with_their_class_and_fields(exc: Exception) -> None:
    back = decode(encode(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_os_errors_keep_their_errno() -> None:
    back = decode(encode(OSError(errno.ENOSPC, "No space left on device")))
    assert isinstance(back, OSError) and back.errno == errno.ENOSPC
    assert is_disk_full(back)
    assert isinstance(decode(encode(FileNotFoundError(errno.ENOENT, "gone"))), FileNotFoundError)


def test_anything_else_is_an_internal_error_with_its_text() -> None:
    back = decode(encode(KeyError("d")))
    assert isinstance(back, RuntimeError) and "KeyError" in str(back)
    assert isinstance(decode(encode(CheckpointRefused("no"))), RuntimeError)


def test_a_class_that_is_not_an_upload_error_is_not_built() -> None:
    forged: tuple[object, ...] = ("upload", "subprocess", "Popen", "x", {})
    assert isinstance(decode(forged), HelperFailed)


class _Row:
    """What the worker's side reads of a ledger row."""

    def __init__(self, row_id: int, size: int | None, destination: str = "d") -> None:
        self.id, self.size, self.destination = row_id, size, destination
        self.resume = None
        self.inbox_path = "inbox/f.bin"


def test_only_small_files_without_a_bandwidth_limit_are_handed_over() -> None:
    off = offload.Offload()
    never = threading.Event()
    limits = Bandwidth()
    limits.configure({"d": Limit(1 << 20), "free": Limit()})
    idle = _FakeHelper()
    off._target, off._idle = 1, [idle]  # type: ignore[list-item]  # one helper, idle
    off._keeper_at = float("inf")  # no starting thread: the test plays the helpers

    def take(row: _Row) -> object:
        return off.take(row, limits, never)  # type: ignore[arg-type]

    assert take(_Row(1, offload.SMALL_FILE + 1, "free")) is None  # too large: the worker's
    assert take(_Row(2, 10, "d")) is None  # its destination has a bandwidth limit
    assert off._idle == [idle]
    assert take(_Row(3, offload.SMALL_FILE, "free")) is idle
    # the helper is busy now; once it is gone, nobody waits for one
    off._busy = 0
    started = time.monotonic()
    assert take(_Row(4, 10, "free")) is None
    assert time.monotonic() - started < 1.0  # no wait (a wait would last until a helper is free)
    off._target = 0  # upload_processes = 0 (a reload): nothing is handed over
    off._idle = [idle]  # type: ignore[list-item]
    assert take(_Row(5, 10, "free")) is None


@pytest.mark.process
def test_helpers_that_cannot_start_are_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(offload, "RESTART_PAUSE", 0.01)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # what a helper is started with
    off = offload.Offload()
    try:
        off.configure(load(tmp_path, 2))
        _want(off)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (off.health() or {}).get("given_up"):
            time.sleep(0.05)
        health = off.health()
        assert health is not None and health["given_up"] and health["running"] == 0, health
        assert "upload helpers failed to start 3 times in a row" in caplog.text
        assert "did not start" in caplog.text
        # the cause fixed, a reload of the same configuration tries again, as the log says
        monkeypatch.undo()
        off.configure(load(tmp_path, 2))
        _want(off)
        _running(off, 2)
    finally:
        off.close()


SHORT_STARTS = offload.GIVE_UP_AFTER + 2  # starts that run into a limit before one gets through

# a helper, started in place of `python -m syncd.offload_helper`, that cannot start its own
# thread for its first SHORT_STARTS starts (a thread limit reached), and then serves as usual
HELPER_WITHOUT_THREADS = """#!{python}
import sys, threading
from pathlib import Path
count = Path({count!r})
n = int(count.read_text() or 0) + 1 if count.exists() else 1
count.write_text(str(n))
if n <= {short}:
    def refused(self):
        raise RuntimeError("can't start new thread")
    threading.Thread.start = refused
from syncd import offload_helper
sys.exit(offload_helper.main(sys.argv[2:]))
"""


@pytest.mark.process
@pytest.mark.parametrize("where", ["socketpair", "fork", "helper thread"])
def test_a_start_out_of_descriptors_or_threads_is_waited_out_not_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Starts of helpers that ran into syncd's limits (no descriptor for the socket pair,
    fork refused at the unit's TasksMax=, the helper unable to start its thread) were
    counted as helpers failing to start: an ERROR line each, and after three in a row
    helpers were given up until a reload, though the limit had only been reached for a
    moment. Now such a start is the shortage it is, said once with the daemon's others
    (limits.Shortages, shown in STATUS), and the starting thread waits and tries again;
    helpers run once the limit leaves room."""
    monkeypatch.setattr(offload, "RESTART_PAUSE", 0.01)
    tries = tmp_path / "tries"
    if where == "socketpair":
        real_pair = socket.socketpair

        def pair(*args: Any, **kw: Any) -> tuple[socket.socket, socket.socket]:
            if _counted(tries) <= SHORT_STARTS:
                raise OSError(errno.EMFILE, "Too many open files")
            return real_pair(*args, **kw)

        monkeypatch.setattr(socket, "socketpair", pair)
    elif where == "fork":
        real_popen = subprocess.Popen

        def popen(*args: Any, **kw: Any) -> Any:
            if _counted(tries) <= SHORT_STARTS:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return real_popen(*args, **kw)

        monkeypatch.setattr(subprocess, "Popen", popen)
    else:
        script = tmp_path / "python-without-threads"
        script.write_text(
            HELPER_WITHOUT_THREADS.format(python=sys.executable, count=str(tries), short=SHORT_STARTS)
        )
        script.chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(script))  # what a helper is started with
    shortages = limits.Shortages()
    off = offload.Offload(shortages)
    try:
        off.configure(load(tmp_path, 2))
        _want(off)
        _running(off, 2)
        health = off.health()
        assert health is not None and not health["given_up"], health
    finally:
        off.close()
    assert int(tries.read_text()) > SHORT_STARTS  # it went on past GIVE_UP_AFTER
    assert "failed to start" not in caplog.text and "cannot start an upload helper" not in caplog.text
    assert "did not start" not in caplog.text, caplog.text
    said = [r.getMessage() for r in caplog.records if r.name == "syncd.limits"]
    what = "out of file descriptors" if where == "socketpair" else "cannot start a"
    assert len(said) == 1 and what in said[0], said
    assert shortages.describe()  # and STATUS shows it while it lasts


def test_workers_asking_for_a_helper_do_not_cut_the_pause_between_starts_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker with a small file wakes the starting thread; after a start that failed
    (or ran into a limit, which no longer leads to giving up) that began the next start at
    once, so a shortage would have been tried as often as workers took files."""
    monkeypatch.setattr(offload, "RESTART_PAUSE", 0.1)
    tries: list[float] = []

    def pair(*args: Any, **kw: Any) -> tuple[socket.socket, socket.socket]:
        tries.append(time.monotonic())
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", pair)
    off = offload.Offload()
    try:
        off.configure(load(tmp_path, 1))
        until = time.monotonic() + 0.8
        while time.monotonic() < until:
            _want(off)
            time.sleep(0.002)
    finally:
        off.close()
    assert len(tries) > offload.GIVE_UP_AFTER, tries  # a shortage: not given up
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert min(gaps) >= offload.RESTART_PAUSE, gaps  # one start every RESTART_PAUSE, not one per take


def _counted(path: Path) -> int:
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def _running(off: offload.Offload, n: int) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and ((off.health() or {}).get("running") != n or off._starting):
        time.sleep(0.02)
    assert (off.health() or {}).get("running") == n, off.health()
    return {h.proc.pid for h in off._idle}


def _gone(pids: set[int]) -> bool:
    return not any(_running_pid(p) for p in pids)


def _running_pid(pid: int) -> bool:
    """Not exited (a zombie's cmdline is empty; the file goes when it is reaped)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _want(off: offload.Offload) -> None:
    """A worker with a small file: no helper yet, so it sends it itself, and helpers start."""
    assert off.take(_Row(1, 10), Bandwidth(), threading.Event()) is None  # type: ignore[arg-type]


@pytest.mark.process
def test_no_thread_to_start_helpers_with_is_said_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload that turns helpers on at the thread limit: the starting thread could not
    be started, the error went out of the reload, and no helper ever started (the next
    reload found the thread set). It is said once as the shortage it is, and tried again
    at a file for a helper after the pause."""
    monkeypatch.setattr(offload, "RESTART_PAUSE", 0.0)
    real = threading.Thread.start
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name == "upload-helpers" and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    shortages = limits.Shortages()
    off = offload.Offload(shortages)
    try:
        off.configure(load(tmp_path, 1))  # no error out of it
        assert refused and any("thread" in said for said in shortages.describe()), shortages.describe()
        _want(off)  # the next file for a helper starts the thread, and it a helper
        _running(off, 1)
    finally:
        off.close()


@pytest.mark.process
def test_helpers_start_with_work_and_are_replaced_on_reload(tmp_path: Path) -> None:
    assert sys.platform.startswith("linux")
    off = offload.Offload()
    try:
        assert off.health() is None  # off: nothing to show
        off.configure(load(tmp_path, 2))
        time.sleep(0.3)
        assert off.health() == {  # configured, but no file has wanted one yet
            "configured": 2, "running": 0, "sending": 0, "sent": 0, "failed": 0, "given_up": False,
        }  # fmt: skip
        _want(off)
        first = _running(off, 2)
        off.configure(load(tmp_path, 2))  # the same configuration: nothing happens
        assert {h.proc.pid for h in off._idle} == first
        (tmp_path / "syncd.toml").write_text(CONFIG.format(n=1).replace("offload-test-key", "other-key"))
        off.configure(configmod.load(tmp_path / "syncd.toml"))  # a reload that changes a secret
        second = _running(off, 1)
        assert not second & first and _gone(first)
    finally:
        off.close()
    assert off.health() is None and _gone(second)


@pytest.mark.process
def test_idle_helpers_stop_and_work_starts_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IDLE_STOP is short only while the test waits for the stop: a helper that takes
    # longer than that to start (a busy machine) would otherwise be stopped as soon
    # as it is up, before _running() sees it
    off = offload.Offload()
    try:
        off.configure(load(tmp_path, 2))
        _want(off)
        first = _running(off, 2)
        monkeypatch.setattr(offload, "IDLE_STOP", 0.5)
        deadline = time.monotonic() + offload.CHECK_EVERY + 10
        while time.monotonic() < deadline and not _gone(first):
            time.sleep(0.05)
        assert _gone(first) and (off.health() or {}).get("running") == 0
        monkeypatch.setattr(offload, "IDLE_STOP", 60.0)
        _want(off)
        assert not _running(off, 2) & first
    finally:
        off.close()


class _FakeHelper:
    """A helper that answers with canned messages (the worker's side of the protocol)."""

    def __init__(self, *answers: tuple[object, ...]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[object, ...]] = []
        self.generation = 0
        self.proc = types.SimpleNamespace(pid=4242, poll=lambda: None)

    def send(self, message: tuple[object, ...], fds: list[int] | None = None) -> None:
        self.sent.append(message)

    def receive(self, timeout: float) -> tuple[object, ...] | None:
        return self.answers.pop(0)

    def stop(self, kill: bool = False) -> None:
        self.killed = kill


def _send_with(
    tmp_path: Path, helper: _FakeHelper, checkpoint: Callable[[object], None]
) -> tuple[Receipt, Source]:
    path = tmp_path / "f.bin"
    path.write_bytes(b"twelve bytes")
    st = path.stat()
    off = offload.Offload()
    off._busy = 1  # as take() leaves it
    row = _Row(7, st.st_size)
    item = UploadItem(uuid="u", name="f.bin", relpath="f.bin", size=st.st_size, content_type="x")
    source = Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
    try:
        receipt = off.upload(
            helper,  # type: ignore[arg-type]
            offload.Handover(row, item, source, checkpoint, lambda: None, threading.Event()),  # type: ignore[arg-type]
        )
    except BaseException:
        source.close()
        raise
    return receipt, source


def test_done_gives_the_receipt_and_the_helpers_hash(tmp_path: Path) -> None:
    states: list[object] = []
    receipt = Receipt(remote_id="r1")
    helper = _FakeHelper(("beat",), ("checkpoint", {"v": 1}), ("done", receipt, "ab" * 32))
    got, source = _send_with(tmp_path, helper, states.append)
    with source:
        assert got == receipt and source.sha256() == "ab" * 32 and source.bytes_read == source.size
    assert states == [{"v": 1}] and ("ack", True) in helper.sent


def test_an_os_error_in_the_helper_is_the_uploads_not_the_helpers(tmp_path: Path) -> None:
    helper = _FakeHelper(("error", encode(OSError(errno.EIO, "Input/output error"))))
    with pytest.raises(OSError) as caught:
        _send_with(tmp_path, helper, lambda state: None)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, HelperFailed)


def test_a_checkpoint_the_ledger_refused_ends_the_send_with_the_ledgers_error(tmp_path: Path) -> None:
    def refuse(state: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    helper = _FakeHelper(("checkpoint", {"v": 1}), ("error", encode(CheckpointRefused("refused"))))
    with pytest.raises(sqlite3.OperationalError):
        _send_with(tmp_path, helper, refuse)
    assert ("ack", False) in helper.sent


def test_a_broken_answer_fails_the_helper_and_the_worker_sends_that_file_next(tmp_path: Path) -> None:
    helper = _FakeHelper(("done", "not a receipt", 3))
    with pytest.raises(HelperFailed):
        _send_with(tmp_path, helper, lambda state: None)
    assert helper.killed


def test_metrics_read_the_helpers_counts_when_scraped() -> None:
    from prometheus_client import generate_latest

    from syncd.metrics import Metrics

    seen: list[dict[str, object] | None] = [None]
    m = Metrics()
    m.track_helpers(lambda: seen[0])
    assert b"syncd_upload_helper" not in generate_latest(m.registry)  # off: no series
    seen[0] = {"configured": 2, "running": 2, "sending": 1, "sent": 41, "failed": 1, "given_up": False}
    text = generate_latest(m.registry).decode()
    for line in (
        "syncd_upload_helpers 2.0",
        "syncd_upload_helpers_sending 1.0",
        "syncd_upload_helper_files_total 41.0",
        "syncd_upload_helper_failures_total 1.0",
        "syncd_upload_helpers_given_up 0.0",
    ):
        assert line in text, text


def test_a_file_a_helper_sent_starts_no_hashing_thread_in_the_worker(tmp_path: Path) -> None:
    """The worker's Source of a 5 MiB file (hashed on a thread of its own when read) is never
    read when a helper sends it: no thread is started, and the helper's hash is the file's."""
    path = tmp_path / "five.bin"
    path.write_bytes(os.urandom(5 << 20))
    st = path.stat()
    before = {t.ident for t in threading.enumerate()}
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        source.hashed_as("cd" * 32)
        assert source.sha256() == "cd" * 32
        started = [t.name for t in threading.enumerate() if t.ident not in before]
    assert started == []


class _SilentHelper(_FakeHelper):
    """Answers its canned messages, then nothing (stopped, or hung in the kernel)."""

    def receive(self, timeout: float) -> tuple[object, ...] | None:
        if self.answers:
            return self.answers.pop(0)
        time.sleep(min(timeout, 0.01))
        return None


def test_a_helper_that_says_nothing_is_given_up_and_alive_is_no_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped helper held its worker (and, before, every worker with a small file)
    until syncd stopped. "alive" keeps a helper from being given up, but is not the
    worker's heartbeat: a hang inside the upload is the liveness bound's to find."""
    monkeypatch.setattr(offload, "SILENT_LIMIT", 0.3)
    helper = _SilentHelper(("alive",), ("alive",))
    started = time.monotonic()
    with pytest.raises(HelperFailed, match="said nothing for 0.3s"):
        _send_with(tmp_path, helper, lambda state: None)
    assert 0.3 <= time.monotonic() - started < 5 and helper.killed
    beats: list[int] = []
    helper = _FakeHelper(("alive",), ("alive",), ("done", Receipt(remote_id="r"), "ab" * 32))
    path = tmp_path / "f.bin"
    st = path.stat()
    off = offload.Offload()
    off._busy = 1
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        item = UploadItem(uuid="u", name="f.bin", relpath="f.bin", size=st.st_size, content_type="x")
        handover = offload.Handover(
            _Row(7, st.st_size),  # type: ignore[arg-type]
            item,
            source,
            lambda state: None,
            lambda: beats.append(1),
            threading.Event(),
        )
        off.upload(helper, handover)  # type: ignore[arg-type]
    assert beats == []


def test_a_worker_sends_itself_when_no_helper_is_free_soon() -> None:
    """Two helpers busy with files a slow service takes a second each: the other workers
    must not queue behind them (they did: helpers capped the files in flight)."""
    off = offload.Offload()
    off._target, off._busy = 2, 2
    off._keeper_at = float("inf")  # no starting thread: the test plays the helpers
    started = time.monotonic()
    assert off.take(_Row(1, 10), Bandwidth(), threading.Event()) is None  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5


def test_an_error_class_the_worker_cannot_import_is_a_helper_failure() -> None:
    """An error raised in the helper whose class the worker cannot find (the helper's own
    module is ``__main__`` there) must not end the upload as an internal error."""
    from syncd.offload_helper import HelperFailed, StateTooLarge, decode, encode

    assert isinstance(decode(("upload", "no.such.module", "Gone", "text", {})), HelperFailed)
    assert isinstance(decode(("upload", "syncd.offload_helper", "Missing", "text", {})), HelperFailed)
    main_style = type("StateTooLarge", (StateTooLarge,), {"__module__": "__main__"})
    encoded = encode(main_style("too large"))
    assert encoded[1] == "syncd.offload_helper"


def test_a_helper_out_of_descriptors_or_threads_is_no_service_error() -> None:
    """In a helper, running out of descriptors reaches the destination code as a transport
    error, which it raises as a RetryableError; only that class and its fields crossed,
    not the EMFILE behind it, so the worker took it for the service's failure (its circuit
    fed, the destination said down). It crosses as the shortage it is."""
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise RetryableError("connection failed", transport=True) from exc
    except RetryableError as wrapped:
        back = decode(encode(wrapped))
    assert limits.shortage(back) == limits.DESCRIPTORS
    try:
        raise RetryableError("part failed") from RuntimeError("can't start new thread")
    except RetryableError as wrapped:
        assert limits.shortage(decode(encode(wrapped))) == limits.THREADS
    assert limits.shortage(decode(encode(RetryableError("503", status=503)))) is None
