"""The fixed CPU cost of starting syncd: what every `syncd once` run and every upload helper pays.

    .venv/bin/python bench/startup.py [--runs 9]

Prints the CPU seconds (user + system, from ``wait4``) of: the interpreter
alone (``python -c pass``, for reference), ``syncd --help``, ``syncd once``
on an empty folder and on a folder of one small file (sent to the bundled
emulator, which runs in its own process and is not counted), and one upload
helper process (``upload_processes``) from its start until it is ready,
then stopped. Each is run ``--runs`` times; the least and the median are
printed, since a shared machine only ever adds time.

``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` in the environment makes syncd read
that trust store at start (syncd/trust.py); without them certifi's is read
at the first TLS connection, which none of these runs makes. The script
says which it measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from childenv import child_env, start_emulator  # noqa: E402

HELPER = """
import pickle, resource, sys
from syncd import config as configmod
from syncd import offload_start
cfg = configmod.load(sys.argv[1])
helper = offload_start.start(pickle.dumps((cfg.daemon, dict(cfg.destinations))), 0)
assert helper is not None, "the helper did not start"
helper.stop()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu(command: list[str], cwd: Path) -> float:
    """CPU seconds of ``command``'s process (its children not included)."""
    proc = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
    )
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
    return usage.ru_utime + usage.ru_stime


def helper_cpu(cfg: Path) -> float:
    """CPU seconds of one upload helper process: started, configured, ready, stopped."""
    out = subprocess.run(
        [sys.executable, "-c", HELPER, str(cfg)], env=child_env(), check=True, capture_output=True, text=True
    )
    return float(out.stdout.split()[-1])


def folder(base: Path, name: str, url: str) -> Path:
    """``base/name`` with a config of one Lilt destination at ``url`` and its inbox."""
    work = base / name
    (work / "inbox").mkdir(parents=True)
    cfg = work / "syncd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "state"
log_level = "warning"
[destinations.lilt]
type = "lilt"
base_url = "{url}/lilt"
api_key = "demo-lilt-key"
[[folders]]
path = "inbox"
destination = "lilt"
settle_seconds = 0.2
""")
    cfg.chmod(0o600)
    return cfg


def measure(name: str, runs: int, one: Callable[[], float]) -> None:
    one()  # the first run writes the bytecode cache
    seconds = sorted(one() for _ in range(runs))
    print(f"{name:36s} least {seconds[0]:.3f} s   median {seconds[len(seconds) // 2]:.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    store = [v for v in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(v)]
    print(
        f"trust store read at start ({', '.join(store)} set)"
        if store
        else "certifi's trust store (read lazily)"
    )
    syncd = [sys.executable, "-m", "syncd"]
    with tempfile.TemporaryDirectory(prefix="syncd-startup-") as tmp:
        base = Path(tmp)
        port = free_port()
        emulator = start_emulator(base / "emulator", port)
        try:
            url = f"http://127.0.0.1:{port}"
            empty, one_file = folder(base, "empty", url), folder(base, "one", url)

            def once_one_file() -> float:
                (one_file.parent / "inbox" / f"{time.time_ns()}.txt").write_bytes(b"x" * 4096)
                return cpu([*syncd, "-c", str(one_file), "once", "--no-progress"], one_file.parent)

            measure("python -c pass", args.runs, lambda: cpu([sys.executable, "-c", "pass"], base))
            measure("syncd --help", args.runs, lambda: cpu([*syncd, "--help"], base))
            measure(
                "syncd once, empty folder",
                args.runs,
                lambda: cpu([*syncd, "-c", str(empty), "once", "--no-progress"], empty.parent),
            )
            measure("syncd once, one 4 KiB file", args.runs, once_one_file)
            measure("upload helper, start to ready", args.runs, lambda: helper_cpu(empty))
        finally:
            emulator.terminate()
            emulator.wait()


if __name__ == "__main__":
    main()
