"""Cost of one durable ledger state change (WAL + synchronous=FULL).

.venv/bin/python bench/ledger_commit.py [--n 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.ledger import Ledger  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.sqlite3")
        ledger.observe("/in", [f"f{i}" for i in range(args.n)], destination="d")
        rows = ledger.settling()
        started = time.perf_counter()
        for row in rows:
            ledger.checkpoint(row.id, {"v": 1, "parts": {"1": "etag"}})
        per = (time.perf_counter() - started) / len(rows)
        print(f"ledger checkpoint commit: {per * 1000:.3f} ms each ({len(rows)} commits, WAL, FULL)")
        started = time.perf_counter()
        ledger.observe("/in2", [f"g{i}" for i in range(args.n)], destination="d")
        print(
            f"ledger observe batch: {(time.perf_counter() - started) * 1e6 / args.n:.1f} us per path "
            f"({args.n} paths in one transaction)"
        )
        ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
