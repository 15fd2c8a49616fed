"""A large backlog at start, the destination down: ledgering time, memory, watchdog, stop.

    .venv/bin/python bench/backlog.py [--files 100000] [--seconds 60] [--ledger-rows 1000000]

Puts ``--files`` small files in one inbox, points the destination at a port
nothing listens on, and starts ``syncd run`` as systemd would: with a
``NOTIFY_SOCKET`` this script listens on and ``WATCHDOG_USEC`` = 30 s. Prints
how long until every file has a ledger row, the daemon's peak RSS, the
longest gap between two ``WATCHDOG=1`` pings (systemd kills at 30 s; the
target is at most WatchdogSec/2 + 1 s), and how long SIGTERM takes to end it.
No server is needed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from childenv import child_env, start_daemon  # noqa: E402
from status_scale import build  # noqa: E402

WATCHDOG_USEC = 30_000_000


def rows(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                conn.execute("SELECT COALESCE(SUM(n), 0) FROM counts WHERE state != 'done'").fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--drain", type=float, default=5.0)
    ap.add_argument(
        "--ledger-rows",
        type=int,
        default=0,
        help="rows of earlier files (done, archived) already in the ledger, e.g. 1000000",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-backlog-") as tmp:
        base = Path(tmp)
        inbox = base / "inbox"
        inbox.mkdir()
        for i in range(args.files):
            sub = inbox / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                sub.mkdir()
            (sub / f"f{i:06d}.bin").write_bytes(b"x" * 100)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        cfg = base / "syncd.toml"
        cfg.write_text(f"""
[daemon]
state_dir = "state"
workers = 4
drain_seconds = {args.drain}
[destinations.down]
type = "lilt"
base_url = "http://127.0.0.1:{dead_port}/lilt"
api_key = "bench-key-not-secret"
[[folders]]
path = "inbox"
destination = "down"
settle_seconds = 2
""")
        cfg.chmod(0o600)
        if args.ledger_rows:
            t = time.monotonic()
            (base / "state").mkdir(mode=0o700)
            build(base / "state", args.ledger_rows, 1, archived=True, folder_names=[os.path.realpath(inbox)])
            print(f"a ledger of {args.ledger_rows:,} earlier rows built in {time.monotonic() - t:.1f} s")
        notify = base / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.fspath(notify))
        pings: list[float] = []

        def listen() -> None:
            sock.settimeout(0.5)
            while True:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if b"WATCHDOG=1" in data:
                    pings.append(time.monotonic())

        threading.Thread(target=listen, daemon=True).start()
        env = child_env(NOTIFY_SOCKET=os.fspath(notify), WATCHDOG_USEC=str(WATCHDOG_USEC))
        started = time.monotonic()
        proc = start_daemon(cfg, base, env)
        ledger = base / "state" / "ledger.sqlite3"
        ledgered_at = None
        peak = 0
        while time.monotonic() - started < args.seconds:
            if ledgered_at is None and rows(ledger) >= args.files:
                ledgered_at = time.monotonic() - started
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            peak = max(peak, int(line.split()[1]))
            except OSError:
                break
            time.sleep(0.2)
        stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        stopped = time.monotonic() - stop
        sock.close()
        marks = [started, *[p for p in pings if p < stop], stop]
        gap = max(b - a for a, b in zip(marks, marks[1:], strict=False))
        print(
            f"{args.files:,} files waiting at start, destination down, WATCHDOG_USEC=30 s, "
            f"{args.ledger_rows:,} earlier rows in the ledger, {args.seconds:g} s run"
        )
        print(
            "  every file ledgered after: "
            + (f"{ledgered_at:.1f} s" if ledgered_at is not None else f"not within {args.seconds:g} s")
        )
        print(f"  peak RSS: {peak / 1024:.0f} MB")
        print(
            f"  WATCHDOG=1 pings: {len([p for p in pings if p < stop])}, longest gap {gap:.1f} s "
            f"(target <= {WATCHDOG_USEC / 2e6 + 1:.0f} s)"
        )
        print(f"  SIGTERM -> exit {code} in {stopped:.1f} s (drain_seconds = {args.drain:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
