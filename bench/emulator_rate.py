"""How fast the emulator takes uploads: is it ever the bottleneck?

Small files: N client threads, each with its own keep-alive httpx client, run
the full Lilt single-PUT flow (POST /v2/upload/s3/params, then PUT to the
presigned URL) for a fixed time; prints uploads/s and MB/s. Large file: one
single PUT of ``--large-mib`` MiB streamed from a file; prints MB/s.

By default the emulator runs in this process (client and server then share one
GIL, so the figure is a floor); ``--url`` points the clients at an emulator
started elsewhere (``python -m syncd_emulator``) instead.

    python bench/emulator_rate.py [--threads 8] [--seconds 5] [--size 1024]
                                  [--large-mib 100] [--url http://127.0.0.1:8790]
                                  [--data PARENT_DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from syncd_emulator import Emulator  # noqa: E402

KEY = "demo-lilt-key"
MB = 1_000_000


def one_upload(client: httpx.Client, base: str, name: str, body: bytes) -> None:
    r = client.post(
        f"{base}/lilt/v2/upload/s3/params",
        auth=(KEY, KEY),
        json={
            "filename": name,
            "type": "application/octet-stream",
            "metadata": {"size": len(body)},
        },
    )
    r.raise_for_status()
    put = client.put(r.json()["url"], content=body, headers={"Content-Type": "application/octet-stream"})
    put.raise_for_status()


def small_rate(base: str, threads: int, seconds: float, size: int) -> dict[str, float]:
    body = os.urandom(size)
    counts = [0] * threads
    errors: list[BaseException] = []
    start_gate = threading.Barrier(threads + 1)
    deadline = 0.0

    def worker(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            one_upload(client, base, f"warm-{i}.bin", body)  # open the keep-alive connection
            start_gate.wait()
            n = 0
            try:
                while time.perf_counter() < deadline:
                    one_upload(client, base, f"t{i}-{n}.bin", body)
                    n += 1
            except BaseException as exc:  # report, do not hide
                errors.append(exc)
            counts[i] = n

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    deadline = time.perf_counter() + seconds + 0.05
    start_gate.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"benchmark failed: {errors[0]!r}")
    total = sum(counts)
    return {
        "threads": threads,
        "size": size,
        "uploads": total,
        "seconds": round(elapsed, 3),
        "uploads_per_s": round(total / elapsed, 1),
        "mb_per_s": round(total * size / elapsed / MB, 2),
    }


def large_rate(base: str, mib: int, workdir: Path) -> dict[str, float]:
    src = workdir / "large.bin"
    with open(src, "wb") as f:
        block = os.urandom(1024 * 1024)
        for _ in range(mib):
            f.write(block)
    size = src.stat().st_size
    with httpx.Client(timeout=120) as client, open(src, "rb") as f:
        r = client.post(
            f"{base}/lilt/v2/upload/s3/params",
            auth=(KEY, KEY),
            json={
                "filename": "large.bin",
                "type": "application/octet-stream",
                "metadata": {"size": size},
            },
        )
        r.raise_for_status()
        started = time.perf_counter()
        client.put(
            r.json()["url"], content=f, headers={"Content-Type": "application/octet-stream"}
        ).raise_for_status()
        elapsed = time.perf_counter() - started
    src.unlink()
    return {"size": size, "seconds": round(elapsed, 3), "mb_per_s": round(size / elapsed / MB, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=1024, help="bytes per small upload (default 1024)")
    p.add_argument("--large-mib", type=int, default=100, help="size of the large upload (0 = skip)")
    p.add_argument("--url", help="an emulator already running elsewhere (default: start one here)")
    p.add_argument(
        "--data",
        help="parent folder for the in-process emulator's data (default: the system temp folder)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="emu-bench-", dir=args.data) as tmp:
        emulator = None if args.url else Emulator(Path(tmp) / "data").start()
        base = (args.url if emulator is None else emulator.url).rstrip("/")
        try:
            small = small_rate(base, args.threads, args.seconds, args.size)
            large = large_rate(base, args.large_mib, Path(tmp)) if args.large_mib else None
        finally:
            if emulator is not None:
                emulator.stop()
    where = "external emulator" if args.url else "in-process emulator"
    result = {"cpus": os.cpu_count(), "where": where, "small": small, "large": large}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"machine: {os.cpu_count()} CPUs, {where}")
    print(
        f"small uploads ({small['size']} B, initiate + PUT, {small['threads']} threads, "
        f"{small['seconds']} s): {small['uploads']} uploads, {small['uploads_per_s']} uploads/s, "
        f"{small['mb_per_s']} MB/s"
    )
    if large:
        print(
            f"large upload (single PUT, {large['size'] // (1024 * 1024)} MiB): "
            f"{large['seconds']} s, {large['mb_per_s']} MB/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
