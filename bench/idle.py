"""An idle daemon: CPU and memory of `syncd run` watching folders where nothing happens.

    .venv/bin/python bench/idle.py [--folders 10] [--seconds 60]

Starts ``syncd run`` on ``--folders`` empty watched folders (each with a few
subfolders, as real inboxes have), waits until it has started and its first
scans are over, then measures for ``--seconds``: the CPU it used (user +
system, from ``/proc/PID/stat``) as a percentage of one core, its RSS at the
end and its peak, and what it wrote (``/proc/PID/io``: bytes handed to
``write``, the ledger's WAL and its log, as MB a day, and write calls a
minute): an idle daemon on an SD card or a metered cloud disk should not
wear it out. Nothing is uploaded, so no server is needed: the
destination's URL is never contacted while there is nothing to send.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from childenv import child_env, start_daemon, wait_started  # noqa: E402

WARM_UP = 5.0  # seconds after "syncd started": the startup scans, imports settling down


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def written(pid: int) -> tuple[int, int]:
    """(bytes passed to write calls, write calls) of ``pid`` so far."""
    values = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(values["wchar"]), int(values["syscw"])


def write_config(base: Path, folders: int) -> Path:
    lines = [
        "[daemon]",
        'state_dir = "state"',
        "[destinations.idle]",
        'type = "lilt"',
        'base_url = "http://127.0.0.1:9/lilt"',
        'api_key = "bench-key-not-secret"',
    ]
    for i in range(folders):
        inbox = base / f"inbox{i}"
        for sub in ("a", "b", "c"):
            (inbox / sub).mkdir(parents=True)
        lines += ["[[folders]]", f'path = "inbox{i}"', 'destination = "idle"']
    cfg = base / "syncd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    cfg.chmod(0o600)
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-idle-") as tmp:
        base = Path(tmp)
        cfg = write_config(base, args.folders)
        proc = start_daemon(cfg, base, child_env())
        try:
            wait_started(proc, base)
            time.sleep(WARM_UP)
            cpu0, t0, io0 = cpu_seconds(proc.pid), time.monotonic(), written(proc.pid)
            time.sleep(args.seconds)
            cpu1, t1, io1 = cpu_seconds(proc.pid), time.monotonic(), written(proc.pid)
            rss, peak = memory_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    per_day = (io1[0] - io0[0]) / (t1 - t0) * 86400 / 1e6
    calls = (io1[1] - io0[1]) / (t1 - t0) * 60
    print(
        f"idle, {args.folders} folders, {t1 - t0:.0f} s: {share:.2f} % of one core, "
        f"RSS {rss / 1024:.0f} MB (peak {peak / 1024:.0f} MB), "
        f"writes {per_day:.1f} MB a day ({calls:.0f} write calls a minute)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
