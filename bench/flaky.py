"""A flaky service: how fast files get through, and what it costs them.

    .venv/bin/python bench/flaky.py [--files 200] [--fail-rate 0 0.2 0.5] [--workers 4]

Starts the bundled emulator with ``--fail-rate F --faults 503`` (each request
answered 503 with probability F, seeded) and ``syncd run`` on ``--files``
small files, and waits until every file is final. Prints, per fail rate: the
time, files/s, how often the destination's circuit opened ("is down" lines),
the failed attempts the files were charged (``max_attempts`` counts them), and the files that ended in
``failed_dir``. A service that fails some requests but serves the rest should
slow syncd down by about that share, open the circuit rarely if ever, and
fail no file: an outage is not the files' fault (docs/guarantees.md, 8).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from childenv import child_env, start_daemon, start_emulator  # noqa: E402
from fastserver import syncd_config  # noqa: E402
from throughput import free_port  # noqa: E402

TIMEOUT = 600.0
KEY = "bench-key-not-secret"  # the one fastserver.syncd_config writes


def _counts(ledger: Path) -> tuple[dict[str, int], int]:
    """(rows per state, attempts charged in total), read-only."""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        states = dict(db.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
        (attempts,) = db.execute("SELECT coalesce(sum(attempts), 0) FROM files").fetchone()
        return states, int(attempts)
    finally:
        db.close()


def run(rate: float, files: int, workers: int, keep: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="syncd-flaky-") as name:
        tmp = Path(name)
        port = free_port()
        faults = ["--fail-rate", str(rate), "--faults", "503", "--seed", "7"] if rate else []
        emu = start_emulator(tmp / "emu", port, "--quiet", "--lilt-key", KEY, *faults)
        try:
            cfg = syncd_config(
                tmp, f"http://127.0.0.1:{port}", daemon=f"workers = {workers}", folder="settle_seconds = 0"
            )
            for i in range(files):
                (tmp / "inbox" / f"f{i:05d}.txt").write_bytes(b"x" * 1024)
            ledger = tmp / "state" / "ledger.sqlite3"
            t0 = time.monotonic()
            daemon = start_daemon(cfg, tmp, child_env())
            try:
                states: dict[str, int] = {}
                attempts = 0
                while time.monotonic() - t0 < TIMEOUT:
                    time.sleep(0.25)
                    if not ledger.exists():
                        continue
                    try:
                        states, attempts = _counts(ledger)
                    except sqlite3.Error:
                        continue
                    if states.get("done", 0) + states.get("failed", 0) >= files:
                        break
                elapsed = time.monotonic() - t0
            finally:
                daemon.terminate()
                daemon.wait(60)
            log = (tmp / "daemon.log").read_text(errors="replace")
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"daemon-{rate:g}.log").write_text(log)
            opened = log.count("is down")
            done, failed = states.get("done", 0), states.get("failed", 0)
            left = files - done - failed
            print(
                json.dumps(
                    {
                        "fail_rate": rate,
                        "seconds": round(elapsed, 1),
                        "files_per_s": round(done / elapsed, 1),
                        "circuit_opened": opened,
                        "attempts_charged": attempts - done,  # the successful one is counted too
                        "failed": failed,
                        "not_final_at_timeout": left,
                    }
                )
            )
        finally:
            emu.terminate()
            emu.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--fail-rate", type=float, nargs="+", default=[0.0, 0.2, 0.5])
    ap.add_argument("--keep-logs", type=Path, help="copy each run's daemon log into this folder")
    args = ap.parse_args()
    for rate in args.fail_rate:
        run(rate, args.files, args.workers, args.keep_logs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
