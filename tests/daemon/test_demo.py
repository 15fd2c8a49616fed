"""`make run`'s demo: its config is valid and every folder reaches its service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from syncd import config as configmod
from syncd.demo import FOLDERS, _config
from tests.harness import ROOT, wait_until


def test_demo_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(_config("http://127.0.0.1:8790"))
    path.chmod(0o600)
    cfg = configmod.load(path)
    assert cfg.warnings == ()
    assert {f.destination for f in cfg.folders} == {"lilt", "wriftai", "xvid", "apivideo"}


@pytest.mark.process
def test_demo_runs_and_delivers_to_every_service(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), 20, what="demo emulator")
        wait_until(lambda: (tmp_path / "demo" / "state" / "ledger.sqlite3").exists(), 20, what="demo daemon")
        time.sleep(1.0)
        for name, *_ in FOLDERS:
            (tmp_path / "demo" / "inbox" / name / f"{name}.bin").write_bytes(os.urandom(2048) + name.encode())
        wait_until(
            lambda: all((tmp_path / "demo" / "archive" / n / f"{n}.bin").exists() for n, *_ in FOLDERS),
            30,
            what="every demo folder archived",
        )
        services = {u["service"] for u in httpx.get(url + "/_emulator/uploads").json()["uploads"]}
        assert services == {"lilt", "wriftai", "xvid", "apivideo"}
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert "syncd demo is running" in out


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/_emulator/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_second_demo_says_the_first_runs_and_leaves_its_config_alone(tmp_path: Path) -> None:
    """A second `make run` wrote a new emulator port into the running demo's config, then
    died of the lock with a traceback; the running demo's next reload went to a dead port."""
    from syncd import demo
    from syncd.commands.common import EXIT_LOCKED
    from syncd.lock import StateLock

    (tmp_path / "state").mkdir(mode=0o700)
    config = tmp_path / "syncd.toml"
    config.write_text("# the running demo's\n")
    first = StateLock(tmp_path / "state")
    first.acquire()
    try:
        assert demo.main(["--dir", str(tmp_path)]) == EXIT_LOCKED
    finally:
        first.release()
    assert config.read_text() == "# the running demo's\n"
