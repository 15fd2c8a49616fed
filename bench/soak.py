"""Crash soak: SIGKILL the real daemon N times (default 1000) while files keep
arriving, restart it each time, and check that nothing was lost.

    .venv/bin/python bench/soak.py --kills 1000 [--seed 1] [--workdir DIR] [--upload-processes N]
                                   [--after-upload keep]

Prints the counts at the end: kills, files dropped, files done, remote objects,
duplicate uploads (only ever files in flight at a kill), and the time taken.
Exit 1 if an invariant failed. CI runs the same loop with 50 kills
(tests/daemon/test_crash.py::test_random_sigkill_loop); this is the long version.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Setup, wait_until  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--max-delay", type=float, default=1.0, help="longest run between kills (s)")
    ap.add_argument("--upload-processes", type=int, default=0, help="upload helpers (syncd/offload.py)")
    ap.add_argument(
        "--after-upload",
        choices=("archive", "keep"),
        default="archive",
        help="keep: files stay in the inbox, and every restart's scan must know them as uploaded",
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="syncd-soak-"))
    s = Setup(
        work,
        folders=[
            {"name": "a", "labels": ["x"], "after_upload": args.after_upload},
            {"name": "b", "after_upload": args.after_upload},
        ],
        emulator={"seed": args.seed},
        daemon={"upload_processes": args.upload_processes},
    )
    started = time.monotonic()
    n = 0
    try:
        for kill in range(args.kills):
            for _ in range(rng.randint(1, 8)):
                s.drop(f"k{kill}-{n}.bin", rng.randbytes(rng.randint(0, 50_000)), rng.choice("ab"))
                n += 1
            s.start()
            time.sleep(rng.uniform(0.15, args.max_delay))
            s.kill()
            s.invariants()
            if (kill + 1) % 50 == 0:
                print(f"{kill + 1} kills, {n} files dropped, {s.counts()}", flush=True)
        s.start()
        wait_until(lambda: s.all_done(), 600, 0.5, "everything after the soak")
        s.invariants()
        s.stop()
        uploads = s.emulator.uploads()
        received = sum(u["times_received"] for u in uploads)
        print(
            f"kills={args.kills} files={n} done={s.counts().get('done', 0)} "
            f"remote_objects={len(uploads)} receipts={received} "
            f"duplicate_uploads={received + len(uploads) - 2 * n + (n - len(uploads))} "
            f"seconds={time.monotonic() - started:.0f}"
        )
        print("invariants held: no file lost, archive == remote bytes, ledger integrity ok")
        return 0
    except AssertionError as exc:
        print(f"INVARIANT FAILED: {exc}\nworkdir kept at {work}", file=sys.stderr)
        return 1
    finally:
        s.close()


if __name__ == "__main__":
    raise SystemExit(main())
