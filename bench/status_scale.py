"""`syncd status` on a large ledger.

    .venv/bin/python bench/status_scale.py [--rows 1000000] [--folders 10]

Builds a ledger of ``--rows`` rows through the ledger's own verbs (most of them
done, some failed, retrying and settling, spread over ``--folders``
folders), then prints how long ``syncd status --json`` takes as a command
(Python start-up included) and how long its ledger queries take in process.
The counts come from counters the ledger keeps in the same transaction as
each change, so neither grows with the number of rows.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from childenv import child_env  # noqa: E402

from syncd.ledger import Ledger  # noqa: E402

BATCH = 20_000


def build(
    state: Path, rows: int, folders: int, *, archived: bool = False, folder_names: list[str] | None = None
) -> None:
    """A ledger of ``rows`` rows over ``folders`` inboxes: 97 % done, 1 % failed, 1 %
    retrying, 1 % queued (``archived``: every row done and its file in the archive)."""
    ledger = Ledger.open(state / "ledger.sqlite3")
    try:
        made = 0
        while made < rows:
            n = min(BATCH, rows - made)
            index = (made // BATCH) % folders
            folder = folder_names[index] if folder_names else str(state.parent / f"inbox{index}")
            ledger.observe(folder, [f"old/f{made + i:08d}" for i in range(n)], destination="d")
            made += n
        conn = ledger._conn  # bulk state changes for the fixture only; the triggers still run
        conn.execute("BEGIN IMMEDIATE")
        if archived:
            conn.execute(
                "UPDATE files SET state = 'done', done_at = updated_at, size = 100,"
                " sha256 = printf('%064d', id), location = CAST('/archive/' || id AS BLOB)"
            )
        else:
            conn.execute("UPDATE files SET state = 'done', done_at = updated_at WHERE id % 100 > 2")
            conn.execute("UPDATE files SET state = 'failed', last_error = 'refused' WHERE id % 100 = 1")
            conn.execute("UPDATE files SET state = 'retrying', last_error = 'later' WHERE id % 100 = 2")
        conn.execute("COMMIT")
    finally:
        ledger.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--folders", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-status-") as tmp:
        base = Path(tmp)
        state = base / "state"
        state.mkdir()
        started = time.monotonic()
        build(state, args.rows, args.folders)
        print(f"built a ledger of {args.rows:,} rows in {time.monotonic() - started:.1f}s")
        lines = [
            "[daemon]",
            'state_dir = "state"',
            "[destinations.d]",
            'type = "lilt"',
            'base_url = "http://127.0.0.1:9/lilt"',
            'api_key = "bench-key-not-secret"',
        ]
        for i in range(args.folders):
            (base / f"inbox{i}").mkdir()
            lines += ["[[folders]]", f'path = "inbox{i}"', 'destination = "d"']
        cfg = base / "syncd.toml"
        cfg.write_text("\n".join(lines) + "\n")
        cfg.chmod(0o600)
        env = child_env()
        whole = []
        for _ in range(args.runs):
            t = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "syncd", "-c", str(cfg), "status", "--json"],
                check=True,
                capture_output=True,
                env=env,
                cwd=base,
            )
            whole.append(time.monotonic() - t)
        ledger = Ledger.open(state / "ledger.sqlite3", readonly=True)
        queries = []
        try:
            for _ in range(args.runs):
                t = time.monotonic()
                ledger.counts()
                ledger.counts_by_folder()
                ledger.recent_errors(10)
                ledger.done_today()
                queries.append(time.monotonic() - t)
        finally:
            ledger.close()
        start = subprocess.run([sys.executable, "-c", "import syncd.cli"], env=env, check=True)
        assert start.returncode == 0
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import syncd.cli"], env=env, check=True)
        imports = time.monotonic() - t
        print(
            f"syncd status --json, {args.rows:,} rows: median {statistics.median(whole) * 1000:.0f} ms "
            f"(of which Python start-up and imports {imports * 1000:.0f} ms); ledger queries "
            f"median {statistics.median(queries) * 1000:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
