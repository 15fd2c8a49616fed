"""The environment benchmarks start syncd (and the other tools) with.

syncd runs from this checkout (``PYTHONPATH``) with its bytecode cached, as an
installed syncd has it: ``PYTHONDONTWRITEBYTECODE`` (set in some shells and CI
images) would make every start compile syncd's modules again, about 0.15 s of
CPU per process, which a benchmark of ``syncd once`` would count as syncd's.
The cache goes to ``.venv/pycache``, outside the source tree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".venv" / "pycache"))
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def start_daemon(cfg: Path, base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``syncd run`` on ``cfg`` in ``base``, its output in ``base/daemon.log``."""
    with open(base / "daemon.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "-c", str(cfg), "run"],
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_started(proc: subprocess.Popen[bytes], base: Path, timeout: float = 30.0) -> None:
    """Until the daemon started by :func:`start_daemon` in ``base`` says it has started."""
    deadline = time.monotonic() + timeout
    while b"syncd started" not in (base / "daemon.log").read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the daemon did not start: see " + str(base / "daemon.log"))
        time.sleep(0.05)


def start_emulator(data: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """``syncd emulate`` on 127.0.0.1:``port`` (``args``: more of its options), once it
    takes connections; the caller terminates it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd",
            "emulate",
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the emulator did not start")
