"""syncd as a systemd service, proved against real things.

The real daemon runs as a subprocess (tests/harness.py) against the
in-process emulator. systemd is stood in for by a real ``AF_UNIX`` datagram
socket bound in a temporary folder and passed as ``NOTIFY_SOCKET`` (with
``WATCHDOG_USEC``), and by real signals. Metrics are fetched over HTTP,
folders are really deleted, unmounted (a private mount namespace) and
filled up (a small tmpfs), and inotify limits are really lowered (a private
user namespace). Scenarios needing namespaces skip with a message where
``unshare`` is not permitted.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from syncd.ledger import Row
from tests.harness import CANARY_KEY, Setup, wait_until

MiB = 1024 * 1024


# -- a notify socket -------------------------------------------------------------------------


class NotifySocket:
    """A bound AF_UNIX/SOCK_DGRAM socket that records every sd_notify datagram."""

    def __init__(self, abstract: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="syncd-notify-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"syncd-test-{os.getpid()}-{random.randrange(1 << 30)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def env(self, watchdog_usec: int = 1_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(watchdog_usec)}

    def snapshot(self, since: int = 0) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages[since:])

    def mark(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(
        self,
        pred: Callable[[dict[str, str]], bool],
        timeout: float = 20.0,
        what: str = "message",
        since: int = 0,
    ) -> dict[str, str]:
        def found() -> dict[str, str] | None:
            for _, m in self.snapshot(since):
                if pred(m):
                    return m
            return None

        message: dict[str, str] = wait_until(found, timeout, 0.02, what)
        return message

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in self.snapshot() if m.get("WATCHDOG") == "1" and t >= since]

    def statuses(self, since: int = 0) -> list[str]:
        return [m["STATUS"] for _, m in self.snapshot(since) if "STATUS" in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


@pytest.fixture
def make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Setup]]:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)  # the daemon must feed its own watchdog
    made: list[Setup] = []

    def make(**kw: Any) -> Setup:
        s = Setup(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def resume_parts(row: Row) -> set[int]:
    return {int(n) for n in ((row.resume or {}).get("parts") or {})}


def start_wrapped(
    s: Setup, shell: str, env: dict[str, str] | None = None, unshare: tuple[str, ...] = ("-U", "-r", "-m")
) -> subprocess.Popen[bytes]:
    """Start ``syncd run`` in new namespaces after running ``shell`` there.

    ``unshare`` execs sh, which execs python: the Popen pid is the daemon's.
    """
    log = s.tmp / f"daemon-{len(s.logs)}.log"
    s.logs.append(log)
    full = s.env()
    full.update(env or {})
    script = f'{shell}\nexec "$@"'
    cmd = [
        "unshare",
        *unshare,
        "sh",
        "-ec",
        script,
        "sh",
        sys.executable,
        "-m",
        "syncd",
        "-c",
        str(s.config),
        "run",
    ]
    with open(log, "wb") as out:  # the child writes to its own copy of the descriptor
        s.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full, cwd=s.tmp)
    return s.proc


def namespaces_usable(*flags: str, nsenter: bool = False) -> str | None:
    """None if ``unshare FLAGS`` (and nsenter) work here, else why not (for the skip message)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if nsenter and shutil.which("nsenter") is None:
        return "nsenter(1) is not installed"
    out = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return f"unshare {' '.join(flags)} is not permitted here: {out.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the notify protocol, in process ----------------------------------------------------------


def test_notifier_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.notify import Notifier

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier()
    assert not n.enabled and n.watchdog_interval() is None
    n.ready("x")
    n.watchdog()
    n.stopping("y", extend_seconds=5)


def test_notifier_talks_to_an_abstract_socket_and_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd import redact
    from syncd.notify import Notifier

    sock = NotifySocket(abstract=True)
    try:
        redact.register("notify-secret-7f3a")
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        monkeypatch.setenv("WATCHDOG_PID", "1")  # someone else's watchdog
        n = Notifier()
        assert n.watchdog_interval() is None
        n.close()
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        n = Notifier()
        assert n.watchdog_interval() == 0.75
        n.close()
        monkeypatch.delenv("WATCHDOG_PID")
        n = Notifier()
        assert n.watchdog_interval() == 0.75
        n.ready("failed: key notify-secret-7f3a\nrejected")
        n.stopping("stopping", extend_seconds=45)
        n.close()
        n.close()  # twice is fine
        n.status("after close: not sent")
        ready = sock.wait_for(lambda m: m.get("READY") == "1")
        assert ready["STATUS"] == "failed: key *** rejected"
        stop = sock.wait_for(lambda m: m.get("STOPPING") == "1")
        assert stop["EXTEND_TIMEOUT_USEC"] == "45000000"
    finally:
        sock.close()


# -- READY, STATUS, WATCHDOG, reload, stop ----------------------------------------------------


@pytest.mark.process
def test_ready_status_watchdog_reload_and_stop(
    make_setup: Callable[..., Setup], notify: NotifySocket, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "lilt").write_text("wrong-key-4d1c\n")
    s = make_setup(folders=[{"name": "a"}], daemon={"workers": 2}, lilt={"api_key": "credential:lilt"})
    env = {**notify.env(), "CREDENTIALS_DIRECTORY": str(creds)}
    proc = s.start(extra_env=env)
    ready = notify.wait_for(lambda m: m.get("READY") == "1", what="READY=1")
    assert s.ledger_path.exists()
    assert re.fullmatch(r"\d+ queued, \d+ uploading, [\d,]+ done today", ready["STATUS"]), ready

    # Wrong credential: the destination pauses, the file stays.
    s.drop("one.txt", b"one")
    wait_until(lambda: "pausing it" in s.log_text(), 20, what="destination paused")
    notify.wait_for(
        lambda m: "destination lilt paused" in m.get("STATUS", ""),
        10,
        what="STATUS about the paused destination",
    )

    # SIGHUP with a fixed credential, a second folder and more workers.
    (creds / "lilt").write_text(CANARY_KEY + "\n")
    s.folders = [{"name": "a"}, {"name": "b"}]
    s._write_config({"workers": 3}, {"api_key": "credential:lilt"})
    mark = notify.mark()
    proc.send_signal(signal.SIGHUP)
    notify.wait_for(lambda m: m.get("READY") == "1", since=mark, what="READY after reload")
    kinds = [next(iter(m)) for _, m in notify.snapshot(mark) if "WATCHDOG" not in m]
    assert kinds.index("RELOADING") < kinds.index("READY"), kinds
    wait_until(lambda: s.all_done(1), 20, what="the paused file, after the credential was re-read")
    assert "configuration reloaded: 2 folder(s), 1 destination(s), 3 worker(s)" in s.log_text()
    s.drop("two.txt", b"two", "b")
    wait_until(lambda: s.all_done(2), 20, what="a file in the folder added by the reload")
    notify.wait_for(
        lambda m: (
            "2 done today" in m.get("STATUS", "")
            and re.search(r"last upload \d+ s ago", m.get("STATUS", "")) is not None
        ),
        10,
        what="STATUS with the last upload",
    )

    # `syncd status` sees the daemon; `syncd ledger backup` copies the live ledger.
    daemon = s.status()["daemon"]
    assert daemon["running"] and daemon["pid"] == proc.pid
    assert daemon["uptime_seconds"] > 2 and daemon["heartbeat_age_seconds"] < 7
    text = s.cli("status").stdout
    assert re.search(r"daemon: running \(pid \d+, up \d+s, heartbeat \d+s ago\)", text), text
    backup = s.cli("ledger", "backup", str(tmp_path / "backup.sqlite3"))
    assert backup.returncode == 0 and "integrity ok" in backup.stdout, backup.stderr
    assert len(s.rows(tmp_path / "backup.sqlite3")) == 2

    # SIGHUP with a broken config: refused, the old one keeps running, STATUS says why.
    good = s.config.read_text()
    s.config.write_text(good.replace("settle_seconds = 0.3", "settle_seconds = -1", 1))
    mark = notify.mark()
    proc.send_signal(signal.SIGHUP)
    refused = notify.wait_for(lambda m: m.get("READY") == "1", since=mark, what="READY")
    assert refused["STATUS"].startswith(
        "reload failed, running the previous config: folders[0].settle_seconds: must be >= 0"
    ), refused
    assert "reload refused" in s.log_text()
    s.drop("three.txt", b"three", "b")
    wait_until(lambda: s.all_done(3), 20, what="upload after a refused reload")
    assert proc.poll() is None

    # SIGHUP releasing folder a.
    s.folders = [{"name": "b"}]
    s._write_config({"workers": 1}, {"api_key": "credential:lilt"})
    mark = notify.mark()
    proc.send_signal(signal.SIGHUP)
    ok = notify.wait_for(lambda m: m.get("READY") == "1", since=mark, what="READY")
    assert not ok["STATUS"].startswith("reload failed"), ok
    s.drop("ignored.txt", b"not watched any more", "a")
    time.sleep(0.6)
    assert not [r for r in s.rows() if r.relpath == "ignored.txt"]

    # The watchdog, all along (reloads included): pings at a quarter of WATCHDOG_USEC, and
    # never a gap systemd would kill for (1 s); a busy CI machine may stretch one tick.
    pings = notify.pings()
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 16, pings
    assert max(gaps) < 0.75 and 0.2 < statistics.median(gaps) < 0.35, gaps

    # SIGTERM: STOPPING=1, exit 0, and `syncd status` knows it stopped.
    mark = notify.mark()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    stopping = notify.wait_for(lambda m: m.get("STOPPING") == "1", since=mark, what="STOPPING")
    assert "EXTEND_TIMEOUT_USEC" in stopping
    readies = [m for _, m in notify.snapshot() if m.get("READY") == "1"]
    assert len(readies) == 4  # start + three reloads
    daemon = s.status()["daemon"]
    assert not daemon["running"] and daemon["last_heartbeat"] is not None
    s.dropped.pop(("a", "ignored.txt"))
    s.invariants()
    s.assert_no_secret()
    assert "wrong-key-4d1c" not in s.log_text()


@pytest.mark.process
def test_watchdog_pings_stop_while_the_ledger_takes_no_writes(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    s = make_setup()
    proc = s.start(extra_env=notify.env())
    notify.wait_for(lambda m: m.get("WATCHDOG") == "1", what="first WATCHDOG=1")
    # Another process holds the ledger's write lock: the health check cannot write.
    # (Raw SQLite on purpose: the ledger's API never holds a lock past its own verbs.)
    conn = sqlite3.connect(s.ledger_path, timeout=10, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked = time.monotonic()
    time.sleep(2.5)
    released = time.monotonic()
    conn.execute("ROLLBACK")
    conn.close()
    assert notify.pings(since=locked + 0.6) == [] or min(notify.pings(since=locked + 0.6)) > released
    wait_until(lambda: notify.pings(since=released), 5, what="pings again after the lock")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_health_check_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd import config as configmod
    from syncd.daemon import Daemon, MainLoop, ledger_path
    from syncd.ledger import Ledger

    (tmp_path / "in").mkdir()
    (tmp_path / "syncd.toml").write_text(
        tomli_w.dumps(
            {
                "daemon": {"state_dir": "state"},
                "destinations": {
                    "d": {
                        "type": "lilt",
                        "base_url": "http://127.0.0.1:9/lilt",
                        "api_key": "env:HEALTH_TEST_KEY",
                    }
                },
                "folders": [{"path": "in", "destination": "d"}],
            }
        )
    )
    monkeypatch.setenv("HEALTH_TEST_KEY", "health-test-key")
    cfg = configmod.load(tmp_path / "syncd.toml")
    ledger = Ledger.open(ledger_path(cfg))
    loop = MainLoop(Daemon(cfg), ledger)
    try:
        assert loop.health.healthy()
        observer = loop.watcher._native
        assert observer is not None
        observer.stop()  # a dead observer thread: no more pings
        observer.join(5)
        assert not loop.health.healthy()
        loop.watcher.stop()
        assert loop.health.healthy()
        ledger.close()  # a tick that fails makes the daemon unhealthy too
        loop.tick_safely(
            time.monotonic(),
            {"health": 0.0, "heartbeat": 0.0, "sweep": 0.0, "rescan": time.monotonic(), "progress": 0.0},
        )
        assert not loop.health.healthy()
    finally:
        loop.watcher.stop()
        loop.runtime.close()
        ledger.close()


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.process
def test_sigterm_lets_an_upload_in_flight_finish(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    s = make_setup(folders=[{"name": "in"}], daemon={"drain_seconds": 10})
    s.emulator.set_faults(script=[{"op": "lilt.put", "kind": "slow", "delay": 1.5}])
    proc = s.start(extra_env=notify.env())
    notify.wait_for(lambda m: m.get("READY") == "1", what="READY")
    s.drop("a.bin", random.Random(1).randbytes(200_000))
    # The PUT (slowed down) is in flight once the upload was initiated.
    wait_until(
        lambda: any(r["op"] == "lilt.initiate" for r in s.emulator.requests()), 20, what="upload in flight"
    )
    time.sleep(0.3)
    mark = notify.mark()
    proc.send_signal(signal.SIGTERM)
    stopping = notify.wait_for(
        lambda m: m.get("STOPPING") == "1", 1.0, since=mark, what="STOPPING=1 within 1 s"
    )
    assert stopping["STATUS"].startswith("stopping: 1 upload(s) finishing")
    assert proc.wait(15) == 0
    assert s.counts() == {"done": 1}
    assert "uploads in flight finished" in s.log_text()
    s.invariants()


def _large_setup(make_setup: Callable[..., Setup], drain: float, size: int) -> Setup:
    s = make_setup(
        folders=[{"name": "in"}],
        daemon={"drain_seconds": drain},
        lilt={"multipart_threshold": 5 * MiB, "part_size": 5 * MiB},
    )
    s.drop("big.bin", random.Random(25).randbytes(size))
    return s


@pytest.mark.process
def test_sigterm_during_a_large_upload_exits_0_and_resumes_on_restart(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    s = _large_setup(make_setup, drain=0.5, size=25 * MiB)  # 5 parts of 5 MiB
    s.emulator.set_faults(script=[{"op": "lilt.put_part", "kind": "slow", "delay": 0.7, "count": 20}])
    proc = s.start(extra_env=notify.env())
    wait_until(
        lambda: len(resume_parts(s.rows()[0])) >= 2 if s.rows() else False, 30, what="two parts confirmed"
    )
    mark = notify.mark()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    notify.wait_for(lambda m: m.get("STOPPING") == "1", since=mark, what="STOPPING=1")
    row = s.rows()[0]
    assert row.state == "queued" and row.attempts == 0, row  # the attempt is not used
    confirmed = resume_parts(row)
    assert 2 <= len(confirmed) < 5 and confirmed == set(range(1, len(confirmed) + 1))
    assert "drain time (0.5s) is up: interrupting 1 upload(s)" in s.log_text()

    s.emulator.faults.clear()
    s.emulator.reset_log()
    s.start()
    wait_until(lambda: s.all_done(), 30, what="the upload resumed and completed")
    requests = s.emulator.requests()
    signed = {
        int(r["path"].rsplit("/", 1)[1])
        for r in requests
        if r["op"] == "lilt.sign_part" and r["status"] == 200
    }
    assert signed == set(range(1, 6)) - confirmed  # confirmed parts are not sent again
    assert len([r for r in requests if r["op"] == "lilt.put_part" and r["status"] == 200]) == 5 - len(
        confirmed
    )
    assert not [r for r in requests if r["op"] == "lilt.initiate_multipart"]
    s.invariants()
    assert s.stop() == 0


@pytest.mark.process
def test_second_sigterm_exits_at_once_and_safely(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    s = _large_setup(make_setup, drain=60, size=10 * MiB)
    s.emulator.set_faults(script=[{"op": "lilt.put_part", "kind": "slow", "delay": 3, "count": 5}])
    proc = s.start(extra_env=notify.env())
    wait_until(lambda: s.rows() and s.rows()[0].resume, 20, what="multipart upload open")
    time.sleep(0.3)
    mark = notify.mark()
    proc.send_signal(signal.SIGTERM)
    notify.wait_for(lambda m: m.get("STOPPING") == "1", since=mark, what="STOPPING=1")
    time.sleep(0.3)
    assert proc.poll() is None  # draining: up to 60 s, the part takes 3 s
    second = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert time.monotonic() - second < 4
    row = s.rows()[0]
    assert row.state == "queued" and row.attempts == 0 and row.resume, row
    assert "second stop signal: interrupting 1 upload(s)" in s.log_text()
    assert s.integrity() == "ok"


# -- metrics and event lines ---------------------------------------------------------------------


@pytest.mark.process
def test_metrics_endpoint_and_event_log_lines(make_setup: Callable[..., Setup]) -> None:
    port = free_port()
    s = make_setup(folders=[{"name": "in"}], daemon={"metrics_listen": f"127.0.0.1:{port}"})
    for i in range(3):  # dropped while syncd is down: found by the startup scan
        s.drop(f"f{i}.txt", f"file {i}".encode() * 100)
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 503}])
    s.start()
    wait_until(lambda: s.all_done(), 20, what="three files done")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    folder = str(s.inbox())

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("syncd_files", state="done", folder=folder) == 3
    assert value("syncd_uploaded_files_total", destination="lilt") == 3
    total = sum(len(data) for data in s.dropped.values())
    assert value("syncd_uploaded_bytes_total", destination="lilt") == total
    assert value("syncd_upload_duration_seconds_count", destination="lilt") == 3
    assert value("syncd_end_to_end_seconds_count") == 3
    assert value("syncd_end_to_end_seconds_sum") > 0.3 * 3  # settle_seconds at least
    assert value("syncd_retries_total", **{"class": "server_error"}) == 1
    assert value("syncd_rescans_total", folder=folder, reason="startup") == 1
    assert value("syncd_rescan_found_files_total", folder=folder, reason="startup") == 3
    assert value("syncd_folder_healthy", folder=folder) == 1
    assert value("syncd_disk_full") == 0
    assert value("syncd_destination_up", destination="lilt") == 1  # one 503 is no outage
    assert value("syncd_destination_down_since_seconds", destination="lilt") == 0
    assert value("syncd_destination_state", destination="lilt", state="up") == 1
    assert value("syncd_destination_state", destination="lilt", state="down") == 0
    assert value("syncd_workers") == 4
    assert value("syncd_last_upload_timestamp_seconds") > time.time() - 60
    assert value("process_start_time_seconds") > 0

    log = s.log_text()  # one line per event, with what an operator needs
    assert re.search(r"queued '.*f0\.txt' \(600 bytes\)", log)
    assert re.search(
        r"retrying '.*' in \d+\.\ds \(attempt not counted: a failure of the "
        r"service, not of the file\): RetryableError: .*HTTP 503",
        log,
    )
    assert re.search(r"uploaded '.*f0\.txt' to lilt \(600 bytes in [\d.]+s, [\d.]+ MB/s\)", log)
    assert re.search(r"archived '.*f0\.txt' -> '.*archive/in/f0\.txt'", log)
    s.invariants()
    s.assert_no_secret()


# -- folder health -----------------------------------------------------------------------------


@pytest.mark.process
def test_deleted_and_recreated_inbox_keeps_working(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    s = make_setup(folders=[{"name": "in"}])
    s.start(extra_env=notify.env())
    s.drop("a.txt", b"a")
    wait_until(lambda: s.all_done(1), 20, what="first file")
    shutil.rmtree(s.inbox())
    notify.wait_for(
        lambda m: f"inbox {s.inbox()} missing" in m.get("STATUS", ""), 10, what="STATUS inbox missing"
    )
    problem = [f for f in s.status()["folders"]][0]["problem"]
    assert problem == "folder missing"
    s.inbox().mkdir()
    s.drop("b.txt", b"b")
    wait_until(lambda: s.all_done(2), 20, what="a file in the recreated inbox")
    notify.wait_for(
        lambda m: m.get("STATUS", "").startswith("0 queued"), 10, what="STATUS without the problem"
    )
    assert "is not available (folder missing)" in s.log_text()
    s.invariants()


@pytest.mark.process
def test_marker_file_guards_a_folder(make_setup: Callable[..., Setup], notify: NotifySocket) -> None:
    s = make_setup(folders=[{"name": "share", "marker": ".syncd-root"}])
    s.drop("early.txt", b"dropped on the empty mount point")
    s.start(extra_env=notify.env())
    notify.wait_for(
        lambda m: "marker file '.syncd-root' missing" in m.get("STATUS", ""), 10, what="STATUS marker missing"
    )
    time.sleep(1.0)
    assert s.rows() == []  # not scanned
    (s.inbox() / ".syncd-root").touch()
    wait_until(lambda: s.all_done(1), 20, what="the file once the marker is there")
    assert (s.inbox() / ".syncd-root").exists()  # the marker itself is never uploaded
    assert [u["filename"] for u in s.emulator.uploads()] == ["early.txt"]


@pytest.mark.process
def test_unmounted_folder_is_not_scanned_and_comes_back(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    why = namespaces_usable("-U", "-r", "-m", nsenter=True)
    if why:
        pytest.skip(f"needs a private mount namespace: {why}")
    s = make_setup(folders=[{"name": "in", "settle_seconds": 1.0}])
    share, inbox = s.tmp / "share", s.inbox()
    share.mkdir()
    mount = (
        f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(share))}\n"
        f"mount --bind {shlex.quote(str(share))} {shlex.quote(str(inbox))}"
    )
    proc = start_wrapped(s, mount, notify.env())
    notify.wait_for(lambda m: m.get("READY") == "1", what="READY")
    seen = Path(f"/proc/{proc.pid}/root") / str(inbox).lstrip("/")  # the inbox as syncd sees it
    (seen / "a.txt").write_bytes(b"on the share")
    wait_until(lambda: s.counts().get("done") == 1, 20, what="upload from the mounted share")

    (seen / "b.txt").write_bytes(b"settling when the share went away")
    nsenter = ["nsenter", "-t", str(proc.pid), "-U", "-m", "--preserve-credentials"]
    subprocess.run([*nsenter, "umount", str(inbox)], check=True, timeout=10)
    (inbox / "c.txt").write_bytes(b"written to the empty mount point")  # the host's view
    notify.wait_for(
        lambda m: "on another device than before (unmounted?)" in m.get("STATUS", ""),
        10,
        what="STATUS unmounted",
    )
    time.sleep(1.5)
    assert {u["filename"] for u in s.emulator.uploads()} == {"a.txt"}
    assert not [r for r in s.rows() if r.state == "vanished"]

    subprocess.run([*nsenter, "mount", "--bind", str(share), str(inbox)], check=True, timeout=10)
    wait_until(lambda: s.counts().get("done") == 2, 20, what="b.txt once the share is back")
    assert {u["filename"] for u in s.emulator.uploads()} == {"a.txt", "b.txt"}
    assert (inbox / "c.txt").exists()  # never taken from the wrong filesystem
    s.wait_logged("is usable again")  # the health check's line may come after the upload
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.mark.process
def test_a_read_only_archive_folder_is_one_problem_not_an_error_per_file(
    make_setup: Callable[..., Setup], notify: NotifySocket
) -> None:
    """The archive folder is mounted read-only under syncd: the files are uploaded and stay
    in the inbox; the journal says so once, STATUS= names the folder, and each sweep
    tries one file, not all of them (each of them said the error every 10 s). Mounted
    read-write again, the files are archived and the problem goes."""
    why = namespaces_usable("-U", "-r", "-m", nsenter=True)
    if why:
        pytest.skip(f"needs a private mount namespace: {why}")
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0}])
    archive = s.archive()
    archive.mkdir(parents=True, exist_ok=True)
    q = shlex.quote(str(archive))
    proc = start_wrapped(s, f"mount --bind {q} {q}\nmount -o remount,ro,bind {q}", notify.env())
    notify.wait_for(lambda m: m.get("READY") == "1", what="READY")
    for i in range(30):
        s.drop(f"f{i:02}.txt", f"uploaded, not archived {i}".encode())
    wait_until(lambda: s.counts().get("uploaded") == 30, 30, what="30 files uploaded")
    notify.wait_for(
        lambda m: (
            f"uploaded files in {s.inbox()} cannot be archived or deleted: Read-only file system"
            in m.get("STATUS", "")
        ),
        10,
        what="STATUS names the folder",
    )
    time.sleep(12)  # a sweep or two
    log = s.log_text()
    assert log.count("uploaded but could not archive") == 1, log[-3000:]
    assert sorted(p.name for p in s.inbox().iterdir()) == [f"f{i:02}.txt" for i in range(30)]
    nsenter = ["nsenter", "-t", str(proc.pid), "-U", "-m", "--preserve-credentials"]
    subprocess.run([*nsenter, "mount", "-o", "remount,rw,bind", str(archive)], check=True, timeout=10)
    s.wait_logged(f"archive works again in '{s.inbox()}'", timeout=30)
    # in the sweep whose probe worked, not the next (10 s later): those before the probe too
    wait_until(lambda: s.all_done(30), 8, 0.2, "the files archived once the folder takes writes")
    notify.wait_for(lambda m: "cannot be archived" not in m.get("STATUS", "x"), 10, what="problem gone")
    s.invariants()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.mark.process
@pytest.mark.parametrize(
    "limit,sysctl",
    [
        ("max_inotify_watches", "fs.inotify.max_user_watches"),
        ("max_inotify_instances", "fs.inotify.max_user_instances"),
    ],
)
def test_inotify_limit_falls_back_to_polling(
    make_setup: Callable[..., Setup], limit: str, sysctl: str
) -> None:
    why = namespaces_usable("-U", "-r")
    if why:
        pytest.skip(f"needs a private user namespace for its own inotify limits: {why}")
    s = make_setup(folders=[{"name": "tree", "poll_seconds": 0.3}])
    for i in range(8):
        (s.inbox() / f"d{i}").mkdir()
    value = 3 if limit == "max_inotify_watches" else 0
    proc = start_wrapped(s, f"echo {value} > /proc/sys/user/{limit}", unshare=("-U", "-r"))
    s.wait_started()
    for i in range(8):
        s.drop(f"d{i}/f{i}.txt", f"{i}".encode())
    wait_until(lambda: s.all_done(), 20, what="files found by polling")
    log = s.log_text()
    assert "falling back to polling" in log and f"Raise sysctl {sysctl}" in log
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    s.invariants()


@pytest.mark.process
def test_watches_running_out_after_the_start_switch_the_folder_to_polling(
    make_setup: Callable[..., Setup],
) -> None:
    """The watch limit reached only once the folder is watched, by sub-folders a producer
    makes later: each got a WARNING of its own ("cannot watch ..."), nothing in STATUS,
    and files written into them later waited for the periodic rescan (`rescan_seconds`,
    5 minutes by default). Now the folder is polled from then on, said once with the
    sysctl to raise, shown in STATUS, and every file goes within seconds."""
    why = namespaces_usable("-U", "-r")
    if why:
        pytest.skip(f"needs a private user namespace for its own inotify limits: {why}")
    s = make_setup(folders=[{"name": "tree", "poll_seconds": 0.3}], daemon={"rescan_seconds": 600})
    proc = start_wrapped(s, "echo 4 > /proc/sys/user/max_inotify_watches", unshare=("-U", "-r"))
    s.wait_started()
    for i in range(12):
        s.drop(f"d{i:02}/first.txt", f"first {i}".encode())
    wait_until(lambda: s.all_done(), 20, what="the first files (each directory is scanned when it appears)")
    time.sleep(1)  # the health check that sees the limit
    for i in range(12):
        s.drop(f"d{i:02}/later.txt", f"later {i}".encode())
    wait_until(lambda: s.all_done(), 20, what="files written later into directories without a watch")
    log = s.log_text()
    assert log.count("polling it every 0.3s from now on") == 1, log[-3000:]
    assert "Raise sysctl fs.inotify.max_user_watches" in log
    assert "cannot watch" not in log, log[-3000:]
    assert any("inotify limit reached" in p for p in s.status()["daemon"]["problems"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    s.invariants()


@pytest.mark.process
def test_a_state_dir_on_a_read_only_file_system_is_not_a_damaged_ledger(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """ext4 remounts itself read-only after an I/O error: `syncd status` called the ledger
    unusable and advised a rebuild (exit 4); `syncd run` died with a traceback on the lock.
    Both now say the file system is read-only and the ledger fine (exit 1)."""
    why = namespaces_usable("-U", "-r", "-m")
    if why:
        pytest.skip(f"needs a private mount namespace for a tmpfs: {why}")
    state = tmp_path / "ro-state"
    state.mkdir()
    s = make_setup(folders=[{"name": "in"}], daemon={"state_dir": str(state)})
    syncd = f"{shlex.quote(sys.executable)} -m syncd -c {shlex.quote(str(s.config))}"
    script = f"""
mount -t tmpfs -o size=8m tmpfs {shlex.quote(str(state))}
{syncd} once --no-progress >/dev/null 2>&1
mount -o remount,ro {shlex.quote(str(state))}
{syncd} status; echo "status-exit=$?"
{syncd} run; echo "run-exit=$?"
"""
    out = subprocess.run(
        ["unshare", "-U", "-r", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=s.env(),
        cwd=s.tmp,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert "status-exit=1" in text and "run-exit=1" in text, text
    assert "read-only" in text and "do not rebuild it" in text, text
    assert "run `syncd ledger rebuild`" not in text and "Traceback" not in text, text


@pytest.mark.process
def test_once_with_a_full_archive_uploads_everything_and_leaves_that_folders_files(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """`syncd once` with one folder's archive on a full disk: every file is uploaded,
    the other folder is archived, the full one's file stays in its inbox (exit 1, said);
    the next run, with space, archives it without a second upload."""
    why = namespaces_usable("-U", "-r", "-m")
    if why:
        pytest.skip(f"needs a private mount namespace for a small tmpfs: {why}")
    small = tmp_path / "small"  # a 1 MiB tmpfs, mounted only for the first run
    small.mkdir()
    s = make_setup(folders=[{"name": "in", "archive_dir": str(small / "archive")}, {"name": "other"}])
    s.drop("a.bin", os.urandom(2 << 20))  # larger than the archive's disk
    s.drop("b.bin", b"b" * 1000, folder="other")
    mount = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(small))}"
    first = subprocess.run(
        ["unshare", "-U", "-r", "-m", "sh", "-ec", f'{mount}\nexec "$@"', "sh"]
        + [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--no-progress"],
        capture_output=True,
        text=True,
        env=s.env(),
        cwd=s.tmp,
        timeout=120,
    )
    assert first.returncode == 1, first.stderr
    assert f"an archive folder is full ({small / 'archive'}: " in first.stderr
    assert "1 uploaded file(s) stay in the inbox and are archived by the next run" in first.stderr
    assert (s.inbox() / "a.bin").exists() and (s.archive("other") / "b.bin").exists()
    assert sorted(u["filename"] for u in s.emulator.uploads()) == ["a.bin", "b.bin"]
    second = s.cli("once", "--no-progress")  # the tmpfs is gone: the archive has room
    assert second.returncode == 0, second.stderr
    assert (small / "archive" / "a.bin").read_bytes() == s.dropped[("in", "a.bin")]
    assert not (s.inbox() / "a.bin").exists()
    assert all(u["times_received"] == 1 for u in s.emulator.uploads())


@pytest.mark.process
@pytest.mark.parametrize("full", ["archive", "ledger"])
def test_disk_full_pauses_and_resumes(
    make_setup: Callable[..., Setup], notify: NotifySocket, tmp_path: Path, full: str
) -> None:
    why = namespaces_usable("-U", "-r", "-m", nsenter=True)
    if why:
        pytest.skip(f"needs a private mount namespace for a small tmpfs: {why}")
    small = tmp_path / "small"  # an 8 MiB tmpfs, mounted only inside the daemon's namespace;
    # more than the ledger's WAL grows to between checkpoints (1,000 pages: 4 MB)
    small.mkdir()
    if full == "archive":  # a second folder, archived elsewhere, is not held back
        s = make_setup(folders=[{"name": "in", "archive_dir": str(small / "archive")}, {"name": "other"}])
    else:
        s = make_setup(folders=[{"name": "in"}], daemon={"state_dir": str(small / "state")})
    proc = start_wrapped(s, f"mount -t tmpfs -o size=8m tmpfs {shlex.quote(str(small))}", notify.env())
    notify.wait_for(lambda m: m.get("READY") == "1", what="READY")
    seen = Path(f"/proc/{proc.pid}/root") / str(small).lstrip("/")  # the tmpfs, from here
    inside = ["nsenter", "-t", str(proc.pid), "-U", "-m", "--preserve-credentials"]
    archive = seen / "archive" if full == "archive" else s.archive()

    def syncd_inside(*args: str) -> subprocess.CompletedProcess[str]:
        # SQLite resolves /proc/PID/root back to the host's path: ask syncd inside.
        return subprocess.run(
            [*inside, sys.executable, "-m", "syncd", "-c", str(s.config), *args],
            capture_output=True,
            text=True,
            env=s.env(),
            timeout=30,
        )

    def counts() -> dict[str, int]:
        if full == "archive":
            return s.counts()
        out = syncd_inside("status", "--json")
        assert out.returncode == 0, out.stderr
        return {k: v for k, v in json.loads(out.stdout)["states"].items() if v}

    s.drop("a.bin", b"a" * 100_000)
    wait_until(lambda: counts().get("done") == 1, 20, what="first file archived")
    with open(seen / "filler", "wb") as f:  # fill the tmpfs
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    s.drop("b.bin", b"b" * 300_000)
    said = f"archive full ({small / 'archive'}: " if full == "archive" else "disk full, paused (ledger)"
    notify.wait_for(lambda m: m.get("STATUS", "").startswith(said), 20, what=f"STATUS {said}")
    s.drop("c.bin", b"c" * 1000)
    if full == "archive":  # uploads go on; the files wait in the inbox, uploaded
        s.drop("d.bin", b"d" * 1000, folder="other")
        wait_until(lambda: (s.archive("other") / "d.bin").exists(), 20, what="the other folder archived")
        wait_until(lambda: s.counts().get("uploaded") == 2, 20, what="c.bin uploaded, not archived")
        assert "c.bin" in {u["filename"] for u in s.emulator.uploads()}
    else:
        time.sleep(1.5)
        assert "c.bin" not in {u["filename"] for u in s.emulator.uploads()}  # paused: not taken
    assert (s.inbox() / "b.bin").exists() and (s.inbox() / "c.bin").exists()
    assert proc.poll() is None

    (seen / "filler").unlink()  # space is back
    done = 4 if full == "archive" else 3
    wait_until(lambda: counts().get("done") == done, 30, what="all done after space came back")
    notify.wait_for(
        lambda m: m.get("STATUS", "").startswith("0 queued") and "full" not in m["STATUS"],
        10,
        what="STATUS without disk full",
    )
    assert (archive / "b.bin").read_bytes() == b"b" * 300_000
    assert (archive / "c.bin").read_bytes() == b"c" * 1000
    assert not (s.inbox() / "b.bin").exists()
    uploads = s.emulator.uploads()
    assert sorted(u["filename"] for u in uploads) == ["a.bin", "b.bin", "c.bin", "d.bin"][:done]
    assert all(u["times_received"] == 1 for u in uploads)
    assert f"disk full ({full}: " in s.log_text()
    # the next disk-full probe says so: the files may all be archived a moment before
    s.wait_logged("disk space is available again")
    check = syncd_inside("ledger", "check")
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.mark.process
def test_a_full_ledger_disk_at_start_is_waited_out(
    make_setup: Callable[..., Setup], notify: NotifySocket, tmp_path: Path
) -> None:
    """The ledger's disk is full when syncd starts (a reboot with the disk full): SQLite
    cannot make the ledger's -wal and -shm. syncd exited 1; the unit restarted it five
    times in 25 s, then gave up, and once space was freed nothing started it again. It
    now waits for space as a running daemon does, keeping systemd's start timeout at bay
    (EXTEND_TIMEOUT_USEC), and starts when there is room."""
    why = namespaces_usable("-U", "-r", "-m")
    if why:
        pytest.skip(f"needs a private mount namespace for a small tmpfs: {why}")
    small = tmp_path / "small"
    small.mkdir()
    s = make_setup(folders=[{"name": "in"}], daemon={"state_dir": str(small / "state")})
    s.drop("a.bin", b"a" * 1000)
    syncd = f"{shlex.quote(sys.executable)} -m syncd -c {shlex.quote(str(s.config))}"
    proc = start_wrapped(
        s,
        f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(small))}\n"
        f"env -u NOTIFY_SOCKET {syncd} once >/dev/null\n"  # the ledger, closed: no -wal, -shm
        f"cat /dev/zero > {shlex.quote(str(small / 'filler'))} 2>/dev/null || true",
        notify.env(),
    )
    notify.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m, 20, what="a start that waits, extended")
    assert proc.poll() is None, s.log_text()[-2000:]
    assert any("disk" in m.get("STATUS", "") for _, m in notify.snapshot()), notify.snapshot()
    s.drop("b.bin", b"b" * 1000)
    time.sleep(2)
    assert proc.poll() is None and not any(m.get("READY") for _, m in notify.snapshot())
    (Path(f"/proc/{proc.pid}/root") / str(small / "filler").lstrip("/")).unlink()  # space is back
    notify.wait_for(lambda m: m.get("READY") == "1", 20, what="READY once there is room")
    wait_until(lambda: (s.archive() / "b.bin").exists(), 20, what="the file dropped meanwhile")
    assert "the disk holding it is full" in s.log_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
