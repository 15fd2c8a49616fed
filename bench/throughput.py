"""Throughput and memory of `syncd once` against the bundled emulator.

    .venv/bin/python bench/throughput.py [--files 2000] [--size 4096] [--big-mib 200] [--workers 4]

Prints files/s for many small files, MB/s for one large file (single PUT below
the multipart threshold and multipart above it), and the daemon's peak RSS.
The emulator runs in its own process so both sides get a core.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from childenv import child_env, start_emulator  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_random(path: Path, size: int) -> None:
    """``size`` random bytes, written in blocks: this process never holds a large file, so
    the RSS a child inherits until its exec (which its ru_maxrss counts) stays small."""
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 1 << 20)
            out.write(os.urandom(n))
            left -= n


def run_once(
    work: Path, url: str, files: list[tuple[str, int]], workers: int, extra: str = ""
) -> tuple[float, int]:
    """(seconds, peak RSS in KiB of that syncd process) of one ``syncd once`` run."""
    inbox = work / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for name, size in files:
        write_random(inbox / name, size)
    cfg = work / "syncd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "state"
workers = {workers}
[destinations.lilt]
type = "lilt"
base_url = "{url}/lilt"
api_key = "demo-lilt-key"
{extra}
[[folders]]
path = "inbox"
destination = "lilt"
settle_seconds = 0.2
archive_dir = "archive"
""")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "once", "--no-progress", "--log-level", "warning"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"syncd once failed: {errors[-2000:]}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--big-mib", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp:
        emu = start_emulator(Path(tmp, "emu"), port)
        try:
            url = f"http://127.0.0.1:{port}"
            small = [(f"f{i:06d}.bin", args.size) for i in range(args.files)]
            t, rss = run_once(Path(tmp, "small"), url, small, args.workers)
            print(
                f"small files: {args.files} x {args.size} B in {t:.1f}s = "
                f"{args.files / t:.0f} files/s (includes settle 0.2s and startup)"
            )
            big = [("big.bin", args.big_mib * 1024 * 1024)]
            t, rss2 = run_once(Path(tmp, "multipart"), url, big, args.workers)
            print(
                f"one {args.big_mib} MiB file (multipart, 8 MiB parts): {t:.1f}s = "
                f"{args.big_mib * 1.048576 / t:.0f} MB/s"
            )
            t, rss3 = run_once(
                Path(tmp, "single"),
                url,
                big,
                args.workers,
                extra=f"multipart_threshold = {(args.big_mib + 1) << 20}",
            )
            print(
                f"one {args.big_mib} MiB file (single streamed PUT): {t:.1f}s = "
                f"{args.big_mib * 1.048576 / t:.0f} MB/s"
            )
            print(
                f"peak RSS of a syncd process: {max(rss, rss2, rss3) / 1024:.0f} MiB "
                "(the file is streamed, never held in memory)"
            )
        finally:
            emu.terminate()
            emu.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
