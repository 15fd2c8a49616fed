"""What an attacker or an accident can make syncd spend, and who can read what it keeps.

From a security review of the daemon:

* the metrics endpoint: half-open and trickling connections neither add
  threads nor lock a scraper out (a real listener, real sockets);
* the config path: ``/dev/zero`` and a FIFO are refused at once, with bounded
  memory, by the real command line;
* state files: ``state_dir`` 0700 and the ledger, its ``-wal``/``-shm``, the
  lock and backups 0600 after a real daemon run, whatever the umask;
* warnings at daemon start about a config that others can change.
"""

from __future__ import annotations

import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from syncd import metrics as metrics_mod
from syncd.cli import main
from syncd.ledger import Ledger
from syncd.metrics import Metrics
from tests.harness import ROOT, Setup, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the metrics endpoint -------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[tuple[Metrics, str]]:
    m = Metrics()
    m.workers.set(4)
    listen = f"127.0.0.1:{free_port()}"
    m.serve(listen)
    assert m.listen == listen
    try:
        yield m, f"http://{listen}/metrics"
    finally:
        m.stop()


def half_open(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send the start of a request and then nothing."""
    out = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finished
        out.append(c)
    return out


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    """True when the server closed ``sock`` (EOF or reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics_half_open_connections_add_no_threads(endpoint: tuple[Metrics, str]) -> None:
    """300 half-sent requests used to mean 300 handler threads; now the count stays put."""
    _, url = endpoint
    port = int(url.split(":")[2].split("/")[0])
    assert "syncd_workers 4.0" in scrape(url)
    before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    clients = half_open(port, 300)
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + 1, threading.enumerate()
        # Server-side sockets are capped too (the 300 client ends are ours).
        server_fds = len(os.listdir("/proc/self/fd")) - fds_before - len(clients)
        assert server_fds <= metrics_mod.MAX_CONNECTIONS + 4, server_fds
        started = time.monotonic()
        assert "syncd_workers 4.0" in scrape(url)  # a scraper still gets in, at once
        assert time.monotonic() - started < metrics_mod.REQUEST_TIMEOUT - 1
        # The oldest half-open connections made room for the newer ones.
        evicted = sum(closed_by_server(c, 0.05) for c in clients[:200])
        assert evicted >= 200 - metrics_mod.MAX_CONNECTIONS, evicted
        assert threading.active_count() <= before + 1
    finally:
        for c in clients:
            c.close()


def test_metrics_idle_and_trickling_requests_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT", 0.5)
    m = Metrics()
    port = free_port()
    m.serve(f"127.0.0.1:{port}")
    try:
        idle = half_open(port, 5)
        trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n":  # one byte every 0.1 s
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_server(trickle, 0.1):
                closed = True
                break
        assert closed, "a request that never ends held its connection"
        assert time.monotonic() - started < 3  # the deadline is for the whole request
        assert all(closed_by_server(c, 2) for c in idle)
        assert scrape(f"http://127.0.0.1:{port}/metrics")
        for c in (*idle, trickle):
            c.close()
    finally:
        m.stop()


def test_metrics_answers_only_get_and_head_on_metrics(endpoint: tuple[Metrics, str]) -> None:
    _, url = endpoint
    root = url.removesuffix("/metrics")
    head = httpx.head(url, timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert httpx.get(root + "/", timeout=5).status_code == 404
    post = httpx.post(url, content=b"x", timeout=5)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    with socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0]))) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (metrics_mod.MAX_REQUEST_BYTES * 2))
        assert closed_by_server(c, 2)  # an oversized request head is dropped
    openmetrics = httpx.get(url, headers={"accept": "application/openmetrics-text"}, timeout=5)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_metrics_many_scrapes_at_once_and_restart(endpoint: tuple[Metrics, str]) -> None:
    m, url = endpoint
    before = threading.active_count()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(scrape(url))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20 and all("syncd_workers" in r for r in results)
    listen = m.listen
    m.serve("")  # off: the port is released and the threads end
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)
    m.serve(listen)  # on again, same port
    assert "syncd_workers" in scrape(url)
    assert threading.active_count() <= before + 2


def test_metrics_port_in_use_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m = Metrics()
        m.serve(f"127.0.0.1:{port}")
        assert "cannot serve metrics" in caplog.text
        m.stop()


# -- the config path ------------------------------------------------------------------------------


def _limit_memory() -> None:  # in the child: a runaway read dies at 1 GiB, not the host
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def syncd_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=_limit_memory,
    )


@pytest.mark.process
def test_check_refuses_dev_zero_at_once() -> None:
    started = time.monotonic()
    out = syncd_cli("-c", "/dev/zero", "check")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "/dev/zero" in out.stderr and "not a regular file" in out.stderr
    assert "character device" in out.stderr
    assert time.monotonic() - started < 15


@pytest.mark.process
def test_check_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    out = syncd_cli("-c", str(fifo), "check")  # no writer: a plain open() would block forever
    assert out.returncode == 2, out.stderr
    assert f"{fifo}: {fifo} is not a regular file (it is a FIFO)" in out.stderr


@pytest.mark.process
def test_check_refuses_a_huge_config(tmp_path: Path) -> None:
    big = tmp_path / "config.toml"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)  # sparse: 64 GiB that cost nothing on disk
    out = syncd_cli("-c", str(big), "check")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "larger than 1024 KiB" in out.stderr and str(big) in out.stderr


# -- state files after a real run -------------------------------------------------------------------

UMASK_0 = ["sh", "-c", 'umask 000 && exec "$@"', "umask0"]


@pytest.mark.process
def test_state_files_are_private_after_a_daemon_run(make_setup: Callable[..., Setup]) -> None:
    """Under umask 000 (the worst case outside systemd) nothing in state_dir is readable by
    others: the directory 0700, the ledger, -wal, -shm and lock 0600."""
    s = make_setup(folders=[{"name": "in"}])
    state = s.tmp / "state"
    assert not state.exists()
    s.start(wrapper=UMASK_0)
    s.wait_started()
    s.drop("a.txt", b"hello" * 100)
    wait_until(lambda: s.all_done(1), 20, what="a.txt done")
    running = {p.name: mode(p) for p in state.iterdir() if p.is_file()}
    assert s.stop() == 0
    assert mode(state) == 0o700
    assert {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm", "syncd.lock"} <= set(running), (
        running
    )
    assert running == {name: 0o600 for name in running}, running
    for p in state.rglob("*"):
        if p.is_file():
            assert mode(p) == 0o600, p
    s.invariants()


@pytest.mark.process
def test_state_dir_and_ledger_of_syncd_once_under_umask_0(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}])
    s.drop("b.txt", b"x" * 1000)
    proc = s.start("once", "--no-progress", wrapper=UMASK_0)
    assert proc.wait(60) == 0, s.log_text()
    state = s.tmp / "state"
    assert mode(state) == 0o700
    assert mode(state / "ledger.sqlite3") == 0o600 and mode(state / "syncd.lock") == 0o600
    assert s.counts()["done"] == 1


def test_backup_and_rebuild_outputs_are_private(
    make_setup: Callable[..., Setup], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = make_setup(folders=[{"name": "in"}])
    Ledger.open(s.ledger_path).close()
    old = os.umask(0)
    try:
        backup = tmp_path / "backups" / "ledger-backup.sqlite3"
        backup.parent.mkdir()
        assert main(["-c", str(s.config), "ledger", "backup", str(backup)]) == 0
        assert mode(backup) == 0o600
        with s.ledger(backup) as copy:  # a usable copy
            assert copy.integrity_check() == "ok"
        assert main(["-c", str(s.config), "ledger", "rebuild", "--force"]) == 0
    finally:
        os.umask(old)
    state = s.tmp / "state"
    for p in state.iterdir():
        assert mode(p) == 0o600, p  # the new ledger, the lock, the one moved aside
    assert any(".broken-" in p.name for p in state.iterdir())
    capsys.readouterr()


def test_an_older_ledger_is_brought_to_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "ledger.sqlite3"
    Ledger.open(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").touch()
        os.chmod(f"{path}{suffix}", 0o644)  # what earlier versions left
    ledger = Ledger.open(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
    finally:
        ledger.close()
    readonly = Ledger.open(path, readonly=True)  # a reader (syncd status) changes nothing
    readonly.close()


# -- warnings at daemon start ---------------------------------------------------------------------


@pytest.mark.process
def test_daemon_start_warns_about_a_config_others_can_change(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}])
    s.config.chmod(0o664)
    writable_archive = s.archive("in")
    writable_archive.mkdir(parents=True)
    writable_archive.chmod(0o777)
    proc = s.start("once", "--no-progress")
    assert proc.wait(60) == 0, s.log_text()  # the daemon runs, and says why it should not
    log = s.log_text()
    assert f"{s.config} is writable by group/others (mode 0664)" in log
    assert f"folders[0].archive_dir: {writable_archive} is writable by group/others" in log
    out = s.cli("check")  # `syncd check` refuses the archive folder
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"folders[0].archive_dir: {writable_archive} is writable by group/others (mode 0777)" in out.stderr
