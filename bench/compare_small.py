"""Many small files, syncd against a bare httpx loop and rclone, all to the same nginx.

    .venv/bin/python bench/compare_small.py [--files 2000] [--size 4096] [--workers 4] [--runs 2]
                                            [--upload-processes 2]

Every client sends the same files to the same local nginx (bench/fastserver.py):

* a bare httpx keep-alive loop, one thread, doing per file exactly what
  syncd's Lilt destination does on the wire (POST the params, PUT the bytes)
  and nothing else: no ledger, no hashing, no archive;
* ``rclone move`` to nginx's WebDAV with ``--transfers`` = workers;
* ``syncd once`` with ``workers`` uploader threads, ``settle_seconds = 0``,
  archive included: the whole process, start-up to exit;
* the same with ``upload_processes`` helper processes sending the files for
  the workers (syncd/offload.py), their start-up included.

Runs are interleaved; the best of ``--runs`` is kept for each, with the CPU
time (user + system) that run used per file. Since a shared machine has slow
spells, the ratio to the httpx loop is also printed run by run, each from
runs seconds apart. One more row, for reference and not a client anyone
runs: syncd's own Lilt destination code in
``--workers`` threads of this process, with no ledger, no settle and no
archive. It is the ceiling of any design that uploads from threads of one
CPython process: the GIL makes more threads slower than one, and syncd's
own stages come on top of it. Needs nginx and rclone (the script says what
to apt-get).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from childenv import child_env  # noqa: E402
from fastserver import FastServer, missing, syncd_config  # noqa: E402

from syncd.destinations.base import Source, UploadItem  # noqa: E402
from syncd.destinations.lilt import LiltDestination, LiltOptions  # noqa: E402
from syncd.http import make_client  # noqa: E402
from syncd.secrets import Secret  # noqa: E402


def make_files(where: Path, n: int, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (where / f"f{i:06d}.bin").write_bytes(os.urandom(size))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """(seconds, CPU seconds) of one child process, which must succeed."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {out[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def bare_httpx(src: Path, url: str) -> tuple[float, float]:
    files = sorted(src.iterdir())
    started, cpu = time.monotonic(), own_cpu()
    with httpx.Client() as client:
        for path in files:
            body = {"filename": path.name, "type": "application/octet-stream", "metadata": {}}
            r = client.post(
                f"{url}/lilt/v2/upload/s3/params", json=body, headers={"Authorization": "Bearer bench"}
            )
            r.raise_for_status()
            put = client.put(json.loads(r.content)["url"], content=path.read_bytes())
            put.raise_for_status()
    return time.monotonic() - started, own_cpu() - cpu


def destination_only(src: Path, url: str, workers: int) -> tuple[float, float]:
    """syncd's Lilt destination in ``workers`` threads: the upload path and nothing else."""
    files = iter(sorted(src.iterdir()))
    lock = threading.Lock()
    client = make_client()
    dest = LiltDestination("fast", LiltOptions(api_key=Secret("bench"), base_url=f"{url}/lilt/"), client)

    def work() -> None:
        while True:
            with lock:
                path = next(files, None)
            if path is None:
                return
            st = path.stat()
            item = UploadItem(
                uuid="bench", name=path.name, relpath=path.name, size=st.st_size,
                content_type="application/octet-stream",
            )  # fmt: skip
            with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
                dest.upload(item, source, None, lambda state: None)

    started, cpu = time.monotonic(), own_cpu()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    client.close()
    return elapsed, own_cpu() - cpu


def rclone_move(src: Path, url: str, workers: int, env: dict[str, str]) -> tuple[float, float]:
    return run_child(
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
        env=env,
    )


def syncd_once(
    work: Path, url: str, workers: int, env: dict[str, str], processes: int = 0
) -> tuple[float, float]:
    cfg = syncd_config(
        work,
        url,
        daemon=f"workers = {workers}\nupload_processes = {processes}",
        folder='settle_seconds = 0\narchive_dir = "archive"',
    )
    return run_child(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "once", "--no-progress", "--log-level", "warning"],
        cwd=work,
        env=env,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--upload-processes", type=int, default=2, help="second syncd row; 0: none")
    args = ap.parse_args()
    need = missing()
    if need:
        print(f"skipped: this benchmark needs nginx and rclone: {need}")
        return 0
    env = child_env(RCLONE_CONFIG="/dev/null")
    best: dict[str, tuple[float, float]] = {}  # name: (seconds, CPU seconds) of its best run
    rounds: list[dict[str, float]] = []  # per run: name -> its rate / the httpx loop's rate
    bare = "bare httpx loop (1 thread)"
    rclone = f"rclone move (WebDAV, {args.workers} transfers)"
    syncd = f"syncd once ({args.workers} workers)"
    helped = f"syncd once (+ {args.upload_processes} upload processes)"
    ceiling = f"syncd's destination alone ({args.workers} thr.)"
    with tempfile.TemporaryDirectory(prefix="syncd-small-") as tmp, FastServer(Path(tmp)) as server:
        for run in range(args.runs):
            base = Path(tmp) / f"run{run}"
            for name in ("httpx", "rclone", "syncd", "helped", "ceiling"):
                make_files(base / name / "inbox", args.files, args.size)
            # syncd right after the httpx loop, rclone (a minute) last: a slow spell of a
            # shared machine then changes the ratios of one round less
            timings = {
                bare: bare_httpx(base / "httpx" / "inbox", server.url),
                syncd: syncd_once(base / "syncd", server.url, args.workers, env),
            }
            if args.upload_processes:
                timings[helped] = syncd_once(
                    base / "helped", server.url, args.workers, env, args.upload_processes
                )
            timings[ceiling] = destination_only(base / "ceiling" / "inbox", server.url, args.workers)
            timings[rclone] = rclone_move(base / "rclone" / "inbox", server.url, args.workers, env)
            rounds.append({name: timings[bare][0] / seconds for name, (seconds, _) in timings.items()})
            for name, (seconds, cpu) in timings.items():
                if seconds < best.get(name, (float("inf"), 0.0))[0]:
                    best[name] = (seconds, cpu)
            server.clear()
            shutil.rmtree(base)
    rate = {name: args.files / seconds for name, (seconds, _) in best.items()}
    print(f"{args.files} files of {args.size} B to nginx on loopback, best of {args.runs} runs")
    print(f"{'client':40} {'files/s':>8} {'x httpx':>8} {'x rclone':>9} {'CPU ms/file':>12}")
    for name in (n for n in (bare, rclone, syncd, helped, ceiling) if n in rate):
        r = rate[name]
        if name == ceiling:
            print("for reference, not a client (no ledger, settle or archive):")
        cpu_ms = best[name][1] / args.files * 1000
        print(f"{name:40} {r:8.0f} {r / rate[bare]:8.2f} {r / rate[rclone]:9.1f} {cpu_ms:12.2f}")
    print("x httpx within each run (the same minute of the machine), run by run:")
    for name in (syncd, helped):
        if name in rate:
            print(f"  {name:38} " + ", ".join(f"{r[name]:.2f}" for r in rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
