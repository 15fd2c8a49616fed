"""One large file, syncd against curl and rclone, all to the same nginx.

    .venv/bin/python bench/compare_large.py [--mib 1024] [--runs 3] [--parallel-parts 4] [--dir DIR]

Every tool uploads the same file to the same local nginx (bench/fastserver.py)
over plain HTTP on loopback; runs are interleaved and the best of ``--runs``
is kept for each, so a noisy neighbour hurts every tool alike:

* ``curl -T`` (one PUT),
* ``rclone copyto`` to nginx's WebDAV,
* ``syncd once``, Lilt single PUT (the multipart threshold raised above the size),
* ``syncd once``, Lilt multipart (8 MiB parts, ``--parallel-parts`` at once).

syncd's figure is the whole ``syncd once`` process, start-up, ledger, SHA-256
and archive included; the upload alone (from syncd's own log line) is shown
beside it. Peak RSS of the syncd process is printed to show it does not grow
with the file. Needs nginx, rclone and curl (the script says what to apt-get).

The file and nginx's store sit in ``--dir``: by default ``/dev/shm`` when it
has room for them, so that the figures are the tools' and not the disk's. On
disk, nginx writes every upload through the page cache, and the kernel's
writeback of the last run's gigabyte takes a core at moments no tool
chooses: the same tool measured 350 to 1,600 MiB/s from one run to the next
here. syncd's ledger stays in the system's temporary directory, on disk, so
its fsyncs are real.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from childenv import child_env  # noqa: E402
from fastserver import FastServer, missing, syncd_config  # noqa: E402

MiB = 1 << 20
UPLOADED = re.compile(r"uploaded .* \((\d+) bytes in ([\d.]+)s")


def in_memory(need: int) -> Path | None:
    """/dev/shm when it is a tmpfs with ``need`` bytes free, else None (the system's temp dir)."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if fs_type(shm) != "tmpfs" or st.f_bavail * st.f_frsize < need + 256 * MiB:
        return None
    return shm


def fs_type(path: Path) -> str:
    """The file-system type of the mount that holds ``path`` (from /proc/self/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def timed(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> tuple[float, int, str, float]:
    """(seconds, peak RSS KiB, output, CPU seconds) of one child process.

    The peak is the child's own ``VmHWM``, sampled while it runs (``ru_maxrss``
    would also count the benchmark's own pages at the fork).
    """
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    peak = [0]
    ended = threading.Event()  # set once wait4 has reaped it (poll() here would reap it first)

    def sample() -> None:
        while not ended.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)  # its own CPU time, user + system
    ended.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {out[-2000:]}")
    return elapsed, peak[0], out, usage.ru_utime + usage.ru_stime


def sha256_seconds(path: Path) -> float:
    """Seconds to SHA-256 ``path`` (in the page cache) on one thread, 1 MiB reads: the
    ceiling for any client that hashes what it sends on this machine."""
    started = time.monotonic()
    digest = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel-parts", type=int, default=4)
    ap.add_argument(
        "--dir", type=Path, help="where the file and nginx's store go (default: /dev/shm, if room)"
    )
    args = ap.parse_args()
    need = missing()
    if need:
        print(f"skipped: this benchmark needs nginx, rclone and curl: {need}")
        return 0
    size = args.mib * MiB
    env = child_env(RCLONE_CONFIG="/dev/null")
    where = args.dir or in_memory(3 * size)  # the file, nginx's temporary copy and its stored one
    with (
        tempfile.TemporaryDirectory(prefix="syncd-large-", dir=where) as tmp,
        tempfile.TemporaryDirectory(prefix="syncd-large-state-") as state,
        FastServer(Path(tmp)) as server,
    ):
        src = Path(tmp) / "big.bin"
        with open(src, "wb") as f:
            for _ in range(args.mib // 64):
                f.write(os.urandom(64 * MiB))
            f.write(os.urandom(size % (64 * MiB)))
        folder = 'settle_seconds = 0\nafter_upload = "delete"'
        single = syncd_config(
            Path(tmp) / "single",
            server.url,
            state_dir=Path(state) / "single",
            daemon="workers = 1",
            folder=folder,
            destination=f"multipart_threshold = {size + MiB}",
        )
        multi = syncd_config(
            Path(tmp) / "multi",
            server.url,
            state_dir=Path(state) / "multi",
            daemon="workers = 1",
            folder=folder,
            destination=f"parallel_parts = {args.parallel_parts}\nmax_connections = 16",
        )
        python = sys.executable

        def run_syncd(cfg: Path) -> tuple[float, int, str]:
            # the same inode each run, with a new mtime: a new version to syncd, nothing copied
            now = time.time_ns()
            os.utime(src, ns=(now, now))
            os.link(src, cfg.parent / "inbox" / "big.bin")
            return timed(
                [python, "-m", "syncd", "-c", str(cfg), "once", "--no-progress"], cwd=cfg.parent, env=env
            )

        tools = {
            "curl -T": lambda i: timed(
                ["curl", "-sS", "-o", "/dev/null", "-T", str(src), f"{server.url}/dav/curl-{i}"], env=env
            ),
            "rclone copyto (WebDAV)": lambda i: timed(
                [
                    "rclone",
                    "copyto",
                    "-q",
                    "--webdav-url",
                    f"{server.url}/dav/",
                    str(src),
                    f":webdav:rclone-{i}",
                ],
                env=env,
            ),
            "syncd once, single PUT": lambda i: run_syncd(single),
            f"syncd once, multipart x{args.parallel_parts}": lambda i: run_syncd(multi),
        }
        best: dict[str, float] = {}
        upload_only: dict[str, float] = {}
        rss: dict[str, int] = {}
        cpu: dict[str, tuple[float, float]] = {}  # of the best run: (the tool's, nginx's)
        for i in range(args.runs):
            for name, run in tools.items():
                nginx_before = server.cpu_seconds()
                seconds, peak, out, used = run(i)
                nginx_used = server.cpu_seconds() - nginx_before
                server.clear()
                if seconds < best.get(name, float("inf")):
                    cpu[name] = (used, nginx_used)
                best[name] = min(best.get(name, seconds), seconds)
                rss[name] = max(rss.get(name, 0), peak)
                m = UPLOADED.search(out)
                if m:
                    upload_only[name] = min(upload_only.get(name, float(m.group(2))), float(m.group(2)))
        hash_seconds = sha256_seconds(src)
        # what every `syncd once` pays whatever it sends: interpreter, imports, the HTTP
        # client's TLS context, the ledger, the scan, exit
        idle = min(
            timed(
                [python, "-m", "syncd", "-c", str(single), "once", "--no-progress"],
                cwd=single.parent,
                env=env,
            )[0]
            for _ in range(args.runs)
        )
        small_mib = 32
        with open(src, "r+b") as f:
            f.truncate(small_mib * MiB)
        _, small_rss, _, _ = run_syncd(single)
        curl, rclone = best["curl -T"], best["rclone copyto (WebDAV)"]
        print(f"one {args.mib} MiB file to nginx on loopback, best of {args.runs} interleaved runs")
        print(f"the file and nginx's store in {tmp} ({fs_type(Path(tmp))}), syncd's ledger in {state}")
        print(
            f"{'tool':34} {'MiB/s':>8} {'x curl':>7} {'x rclone':>9} {'upload only':>12} {'peak RSS':>9}"
            f" {'CPU s tool':>10} {'CPU s nginx':>11}"
        )
        for name, seconds in best.items():
            up = f"{args.mib / upload_only[name]:.0f} MiB/s" if name in upload_only else ""
            print(
                f"{name:34} {args.mib / seconds:8.0f} {curl / seconds:7.2f} {rclone / seconds:9.2f} "
                f"{up:>12} {rss[name] / 1024:6.0f} MiB {cpu[name][0]:10.2f} {cpu[name][1]:11.2f}"
            )
        print(
            f"syncd once with nothing to send (start-up and exit, in every syncd row): {idle:.2f} s; "
            f"the single PUT without it: {args.mib / (best['syncd once, single PUT'] - idle):.0f} MiB/s"
        )
        print(
            f"SHA-256 of the same file alone, one core (syncd hashes every byte it sends, curl and "
            f"rclone do not): {args.mib / hash_seconds:.0f} MiB/s, {rclone / hash_seconds:.2f}x rclone"
        )
        print(
            f"peak RSS of syncd once, single PUT: {small_rss / 1024:.0f} MiB for a {small_mib} MiB "
            f"file, {rss['syncd once, single PUT'] / 1024:.0f} MiB for {args.mib} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
