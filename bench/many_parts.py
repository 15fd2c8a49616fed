"""What the resume state of a many-part upload costs: 10,000 parts into a real ledger.

.venv/bin/python bench/many_parts.py [--parts 10000]

Lilt's 8 MiB parts make a 78 GiB file 10,000 parts. The chunk driver
(syncd/destinations/_chunked.py) saves the resume state, every part's token,
as parts are confirmed; each save rewrites the whole state, so saving after
every part costs the square of the part count. This runs the driver over a
file of ``--parts`` 1 KiB parts (the part size does not change what a
checkpoint costs) with a service that stores nothing, into a real ledger,
twice: checkpoints spaced as syncd spaces them, and one after every part
(the old way). It prints, for each, the checkpoints written, their bytes
(the JSON the ledger stored), and the seconds and CPU seconds of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.destinations import _chunked  # noqa: E402
from syncd.destinations._chunked import Part  # noqa: E402
from syncd.destinations.base import Receipt, Source, UploadItem  # noqa: E402
from syncd.ledger import Ledger  # noqa: E402

PART = 1024


class NullService:
    """Takes every part at once, with an ETag-sized token, and keeps nothing."""

    kind = "bench"
    session_fields = {"id": str}
    rules = _chunked.PartRules(part_size=PART, min_size=PART, max_size=PART, max_parts=1_000_000)

    def open(self, item: UploadItem, source: Source, part_size: int) -> _chunked.Opened:
        return _chunked.Opened({"id": "u" * 64})

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        b"".join(part.stream())
        return f'"{part.number:032x}"'

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        return Receipt(remote_id=session["id"])

    def abort(self, session: dict[str, Any]) -> None:
        pass


def measure(tmp: Path, data: Path, every_part: bool) -> tuple[int, int, float, float]:
    ledger = Ledger.open(tmp / f"ledger-{every_part}.sqlite3")
    ledger.observe("/in", ["big"], destination="d")
    row_id = ledger.settling()[0].id
    written = [0, 0]

    def checkpoint(state: dict[str, Any]) -> None:
        written[0] += 1
        written[1] += len(json.dumps(state))
        ledger.checkpoint(row_id, state)

    st = data.stat()
    item = UploadItem(uuid="u", name="big", relpath="big", size=st.st_size, content_type="x")
    saved = _chunked.SHARE
    if every_part:
        _chunked.SHARE = 1 << 62
    try:
        started, cpu = time.perf_counter(), time.process_time()
        with Source(data, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
            _chunked.run(NullService(), item, source, None, checkpoint)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        _chunked.SHARE = saved
        ledger.close()
    return written[0], written[1], seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-parts-") as tmp:
        data = Path(tmp) / "big"
        data.write_bytes(os.urandom(args.parts * PART))
        print(f"one upload of {args.parts:,} parts, resume state in a real ledger")
        print(f"{'checkpoints':24} {'written':>8} {'MB':>8} {'seconds':>8} {'CPU s':>8}")
        for label, every in (("spaced (syncd)", False), ("after every part", True)):
            count, size, seconds, cpu = measure(Path(tmp), data, every)
            print(f"{label:24} {count:8,} {size / 1e6:8.1f} {seconds:8.1f} {cpu:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
