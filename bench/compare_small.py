"""Many small files, syncd against a bare httpx loop and rclone, all to the same nginx.

    .venv/bin/python bench/compare_small.py [--files 2000] [--size 4096] [--workers 4] [--runs 2]

Every client sends the same files to the same local nginx (bench/fastserver.py):

* a bare httpx keep-alive loop, one thread, doing per file exactly what
  syncd's Lilt destination does on the wire (POST the params, PUT the bytes)
  and nothing else: no ledger, no hashing, no archive;
* ``rclone move`` to nginx's WebDAV with ``--transfers`` = workers;
* ``syncd once`` with ``workers`` uploader threads, ``settle_seconds = 0``,
  archive included: the whole process, start-up to exit.

Runs are interleaved; the best of ``--runs`` is kept for each. Needs nginx and
rclone (the script says what to apt-get).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from childenv import child_env  # noqa: E402
from fastserver import FastServer, missing, syncd_config  # noqa: E402


def make_files(where: Path, n: int, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (where / f"f{i:06d}.bin").write_bytes(os.urandom(size))


def bare_httpx(src: Path, url: str) -> float:
    files = sorted(src.iterdir())
    started = time.monotonic()
    with httpx.Client() as client:
        for path in files:
            body = {"filename": path.name, "type": "application/octet-stream", "metadata": {}}
            r = client.post(
                f"{url}/lilt/v2/upload/s3/params", json=body, headers={"Authorization": "Bearer bench"}
            )
            r.raise_for_status()
            put = client.put(json.loads(r.content)["url"], content=path.read_bytes())
            put.raise_for_status()
    return time.monotonic() - started


def rclone_move(src: Path, url: str, workers: int, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            "rclone",
            "move",
            "-q",
            "--transfers",
            str(workers),
            "--webdav-url",
            f"{url}/dav/",
            str(src),
            ":webdav:rclone",
        ],
        check=True,
        env=env,
    )
    return time.monotonic() - started


def syncd_once(work: Path, url: str, workers: int, env: dict[str, str]) -> float:
    cfg = syncd_config(
        work, url, daemon=f"workers = {workers}", folder='settle_seconds = 0\narchive_dir = "archive"'
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "once", "--no-progress", "--log-level", "warning"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"syncd once failed: {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    need = missing()
    if need:
        print(f"skipped: this benchmark needs nginx and rclone: {need}")
        return 0
    env = child_env(RCLONE_CONFIG="/dev/null")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="syncd-small-") as tmp, FastServer(Path(tmp)) as server:
        for run in range(args.runs):
            base = Path(tmp) / f"run{run}"
            for name in ("httpx", "rclone", "syncd"):
                make_files(base / name / "inbox", args.files, args.size)
            timings = {
                "bare httpx loop (1 thread)": bare_httpx(base / "httpx" / "inbox", server.url),
                f"rclone move (WebDAV, {args.workers} transfers)": rclone_move(
                    base / "rclone" / "inbox", server.url, args.workers, env
                ),
                f"syncd once ({args.workers} workers)": syncd_once(
                    base / "syncd", server.url, args.workers, env
                ),
            }
            for name, seconds in timings.items():
                best[name] = min(best.get(name, seconds), seconds)
            server.clear()
            shutil.rmtree(base)
    rate = {name: args.files / seconds for name, seconds in best.items()}
    httpx_rate = rate["bare httpx loop (1 thread)"]
    rclone_rate = rate[f"rclone move (WebDAV, {args.workers} transfers)"]
    print(f"{args.files} files of {args.size} B to nginx on loopback, best of {args.runs} runs")
    print(f"{'client':36} {'files/s':>8} {'x httpx':>8} {'x rclone':>9}")
    for name, r in rate.items():
        print(f"{name:36} {r:8.0f} {r / httpx_rate:8.2f} {r / rclone_rate:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
