"""Latency with the daemon running: a file renamed into the inbox -> archived.

    .venv/bin/python bench/latency.py [--files 200] [--rate 20] [--settle 0 1]

Starts ``syncd run`` against the local nginx (bench/fastserver.py), then
renames ``--files`` small files into the inbox at ``--rate`` per second (the
way a careful producer drops a file) and reads, from the ledger, when each was
archived (``done_at``). Prints p50, p90, p99 and max of rename -> archived for
each ``--settle`` value. Needs nginx (the script says what to apt-get).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from childenv import child_env, start_daemon, wait_started  # noqa: E402
from fastserver import FastServer, missing, syncd_config  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(base: Path, url: str, files: int, rate: float, settle: float) -> list[float]:
    inbox, staging = base / "inbox", base / "staging"
    cfg = syncd_config(
        base, url, daemon="workers = 4", folder=f'settle_seconds = {settle}\narchive_dir = "archive"'
    )
    staging.mkdir()
    env = child_env()
    proc = start_daemon(cfg, base, env)
    try:
        wait_started(proc, base)
        dropped: dict[str, float] = {}
        for i in range(files):
            name = f"f{i:05d}.bin"
            (staging / name).write_bytes(os.urandom(4096))
            dropped[name] = time.time()
            os.rename(staging / name, inbox / name)
            time.sleep(1 / rate)
        ledger = base / "state" / "ledger.sqlite3"
        deadline = time.monotonic() + 60 + settle
        while True:
            conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
            try:
                done = {
                    os.fsdecode(r[0]): r[1]
                    for r in conn.execute("SELECT relpath, done_at FROM files WHERE state = 'done'")
                }
            finally:
                conn.close()
            if len(done) >= files or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return [done[name] - at for name, at in dropped.items() if name in done]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--settle", type=float, nargs="+", default=[0.0, 1.0])
    args = ap.parse_args()
    need = missing()
    if need:
        print(f"skipped: this benchmark needs nginx: {need}")
        return 0
    with tempfile.TemporaryDirectory(prefix="syncd-latency-") as tmp, FastServer(Path(tmp)) as server:
        for settle in args.settle:
            lat = run(Path(tmp) / f"settle-{settle}", server.url, args.files, args.rate, settle)
            ms = [x * 1000 for x in lat]
            print(
                f"settle_seconds = {settle:g}: {len(ms)}/{args.files} archived; rename -> archived "
                f"p50 {statistics.median(ms):.0f} ms, p90 {percentile(ms, 0.9):.0f} ms, "
                f"p99 {percentile(ms, 0.99):.0f} ms, max {max(ms):.0f} ms "
                f"({args.rate:g} files/s, 4 KiB each)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
